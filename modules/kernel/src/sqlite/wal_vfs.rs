//! The writer's VFS: SQLite's own (`unix`), except that a transaction's WAL
//! frames reach the file in one `pwrite` instead of two per page.
//!
//! SQLite appends each page a commit changed to the WAL as a frame, and writes
//! each frame with two system calls: its 24-byte header, then the page. On
//! the place-order load that was ~160 `pwrite`s per order, and the kernel's
//! write path (system call, file lookup, page-cache folio lock, `mtime`
//! update, per call) took a fifth of agora's CPU (docs/performance.md). This
//! shim gathers contiguous WAL writes in a buffer and writes them at once:
//!
//! - when the commit frame's page arrives (a frame header whose "database
//!   size" field is not zero marks it): the buffer is written and its error,
//!   if any, fails the commit, before SQLite publishes the new frames in the
//!   WAL index, where readers look for them;
//! - before anything else that touches the file on this handle: a read, a
//!   sync, a truncate, its size, a file control, closing it;
//! - when a write does not continue the buffer (it is written first, so the
//!   file sees the writes in SQLite's order), or the buffer reaches 1 MiB.
//!
//! Between a commit frame and the next append (at the log's end, or at 0 when
//! the log starts over), writes pass straight through: the checksum rewrite
//! and sector padding SQLite may do after the commit frame then reach the
//! file before the WAL index publishes them, as they would without the shim.
//! So a reader never finds a frame that is not in the file, and a failed
//! write is reported to the transaction it belongs to, as with `unix`.
//!
//! Everything but the WAL (the database file, its shared memory, the other
//! connections' WAL handles) is `unix`'s own, opened by it: nothing of the
//! shim sits in their path. A handle is used by one connection, and SQLite
//! never uses a connection from two threads at once.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

use rusqlite::ffi;

/// The name connections open the writer with.
pub(crate) const NAME: &str = "agora-wal";
const NAME_C: &CStr = c"agora-wal";

/// A WAL frame's header; bytes 4..8 hold the database size after a commit
/// frame, 0 in every other frame.
const FRAME_HEADER: usize = 24;

/// Bytes gathered at most before they are written anyway, and the most one
/// `unix` write takes: it masks a write's length to 17 bits (131,071
/// bytes), so a longer one would come back short and fail as `SQLITE_FULL`.
const MAX_BUFFER: usize = 64 * 1024;

/// `unix`, which every call but the WAL's writes goes to.
static REAL: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());
static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

#[cfg(test)]
thread_local! {
    /// `pwrite`s this thread made to WAL files through this VFS.
    static WRITES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Register the VFS (once per process).
///
/// # Errors
/// SQLite has no default VFS, or refused the registration.
pub(crate) fn register() -> anyhow::Result<()> {
    REGISTERED
        .get_or_init(|| {
            // SAFETY: `sqlite3_vfs_find` initialises SQLite and returns its
            // default VFS, which lives as long as the process. The copy is
            // leaked so that SQLite may keep a pointer to it for ever.
            unsafe {
                let real = ffi::sqlite3_vfs_find(ptr::null());
                if real.is_null() {
                    return Err("SQLite has no default VFS".to_owned());
                }
                REAL.store(real, Ordering::Release);
                let mut vfs = *real;
                let real_size = usize::try_from((*real).szOsFile).unwrap_or(0);
                vfs.szOsFile = c_int::try_from(std::mem::size_of::<WalFile>() + real_size)
                    .map_err(|e| e.to_string())?;
                vfs.zName = NAME_C.as_ptr();
                vfs.pNext = ptr::null_mut();
                vfs.xOpen = Some(open);
                let vfs: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
                match ffi::sqlite3_vfs_register(vfs, 0) {
                    ffi::SQLITE_OK => Ok(()),
                    rc => Err(format!("SQLite refused the {NAME} VFS (error {rc})")),
                }
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// `pwrite`s this thread made to WAL files through this VFS so far.
#[cfg(test)]
pub(crate) fn writes() -> u64 {
    WRITES.with(std::cell::Cell::get)
}

/// A WAL handle: ours first (SQLite sees `base`), `unix`'s right after it.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    buffer: Vec<u8>,
    /// The file offset of `buffer`'s first byte.
    buffer_at: i64,
    /// Where the last append ended: the next frame goes there.
    end: i64,
    /// The last buffered write was a commit frame's header.
    commit_header: bool,
    /// Past a commit frame: writes go straight to the file until the next append.
    through: bool,
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real = REAL.load(Ordering::Acquire);
    // SAFETY: SQLite calls this with `file` pointing at `szOsFile` bytes
    // (ours: a `WalFile` and `unix`'s file after it), `real` was set before
    // the VFS was registered, and `unix`'s `xOpen` is always present.
    unsafe {
        let Some(real_open) = (*real).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Not a WAL: `unix`'s own file, with `unix`'s methods.
            return real_open(real, name, file, flags, out_flags);
        }
        let inner = file
            .cast::<u8>()
            .add(std::mem::size_of::<WalFile>())
            .cast::<ffi::sqlite3_file>();
        let rc = real_open(real, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // SQLite calls no method of a file whose open failed.
            (*file).pMethods = ptr::null();
            return rc;
        }
        ptr::write(
            file.cast::<WalFile>(),
            WalFile {
                base: ffi::sqlite3_file {
                    pMethods: &WAL_METHODS,
                },
                real: inner,
                buffer: Vec::new(),
                buffer_at: 0,
                end: 0,
                commit_header: false,
                through: false,
            },
        );
        ffi::SQLITE_OK
    }
}

/// The `WalFile` behind a handle SQLite passes to a method.
///
/// # Safety
/// `file` was opened by [`open`] as a WAL and is not closed.
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    // SAFETY: as the caller promises; SQLite uses a handle from one thread at a time.
    unsafe { &mut *file.cast::<WalFile>() }
}

/// `unix`'s methods of the handle inside `w`.
///
/// # Safety
/// `w.real` is an open `unix` file.
unsafe fn methods(w: &WalFile) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: an open file's methods are static tables of its VFS.
    unsafe { &*(*w.real).pMethods }
}

/// Write `bytes` at `at` through `unix`.
///
/// # Safety
/// `w.real` is an open `unix` file.
unsafe fn write_through(w: &WalFile, bytes: &[u8], at: i64) -> c_int {
    // SAFETY: an open file's methods are there while it is open.
    let Some(x) = (unsafe { methods(w) }).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut at = at;
    for chunk in bytes.chunks(MAX_BUFFER) {
        #[cfg(test)]
        WRITES.with(|w| w.set(w.get() + 1));
        // SAFETY: `unix`'s `xWrite` writes the chunk's bytes (at most
        // `MAX_BUFFER`, which it takes whole), looping over short writes.
        let rc = unsafe {
            x(
                w.real,
                chunk.as_ptr().cast::<c_void>(),
                chunk.len() as c_int,
                at,
            )
        };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        at += chunk.len() as i64;
    }
    ffi::SQLITE_OK
}

/// Write what is buffered. The buffer is emptied even when the write fails:
/// SQLite then fails the transaction, and its frames are not published.
///
/// # Safety
/// `w.real` is an open `unix` file.
unsafe fn flush(w: &mut WalFile) -> c_int {
    if w.buffer.is_empty() {
        return ffi::SQLITE_OK;
    }
    // SAFETY: as the caller promises.
    let rc = unsafe { write_through(w, &w.buffer, w.buffer_at) };
    w.buffer.clear();
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes an open WAL handle and `amount` readable bytes at `data`.
    unsafe {
        let w = wal(file);
        let bytes =
            std::slice::from_raw_parts(data.cast::<u8>(), usize::try_from(amount).unwrap_or(0));
        let end = offset + i64::from(amount);
        if w.through {
            if offset == w.end || offset == 0 {
                // The next transaction's first append (or the log starting over).
                w.through = false;
            } else {
                w.end = w.end.max(end);
                return write_through(w, bytes, offset);
            }
        }
        if !w.buffer.is_empty() && offset != w.buffer_at + w.buffer.len() as i64 {
            let rc = flush(w);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if w.buffer.is_empty() {
            w.buffer_at = offset;
        }
        w.buffer.extend_from_slice(bytes);
        w.end = end;
        if bytes.len() == FRAME_HEADER {
            w.commit_header = bytes[4..8] != [0; 4];
        } else if std::mem::take(&mut w.commit_header) {
            // The commit frame's page: the transaction's frames reach the file
            // now, before SQLite publishes them to readers.
            w.through = true;
            return flush(w);
        }
        if w.buffer.len() >= MAX_BUFFER {
            return flush(w);
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes an open WAL handle once and never uses it again;
    // the `WalFile` written by `open` is dropped here.
    unsafe {
        let w = wal(file);
        let flushed = flush(w);
        let closed = match methods(w).xClose {
            Some(x) => x(w.real),
            None => ffi::SQLITE_OK,
        };
        ptr::drop_in_place(file.cast::<WalFile>());
        if flushed == ffi::SQLITE_OK {
            closed
        } else {
            flushed
        }
    }
}

/// Write what is buffered, then call `unix`'s method `f` (`None`: not there).
///
/// # Safety
/// `file` is an open WAL handle.
unsafe fn flushed<F>(file: *mut ffi::sqlite3_file, f: F) -> c_int
where
    F: FnOnce(&WalFile, &ffi::sqlite3_io_methods) -> Option<c_int>,
{
    // SAFETY: as the caller promises.
    unsafe {
        let w = wal(file);
        let rc = flush(w);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        f(w, methods(w)).unwrap_or(ffi::SQLITE_IOERR)
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe {
        flushed(file, |w, m| {
            m.xRead.map(|x| x(w.real, data, amount, offset))
        })
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe { flushed(file, |w, m| m.xTruncate.map(|x| x(w.real, size))) }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe { flushed(file, |w, m| m.xSync.map(|x| x(w.real, flags))) }
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe { flushed(file, |w, m| m.xFileSize.map(|x| x(w.real, size))) }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe { flushed(file, |w, m| m.xFileControl.map(|x| x(w.real, op, arg))) }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe {
        let w = wal(file);
        methods(w)
            .xLock
            .map_or(ffi::SQLITE_OK, |x| x(w.real, level))
    }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe {
        let w = wal(file);
        methods(w)
            .xUnlock
            .map_or(ffi::SQLITE_OK, |x| x(w.real, level))
    }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe {
        let w = wal(file);
        methods(w)
            .xCheckReservedLock
            .map_or(ffi::SQLITE_OK, |x| x(w.real, out))
    }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe {
        let w = wal(file);
        methods(w).xSectorSize.map_or(4096, |x| x(w.real))
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the handle inside.
    unsafe {
        let w = wal(file);
        methods(w).xDeviceCharacteristics.map_or(0, |x| x(w.real))
    }
}
