// A client written against the types openapi-typescript generates from
// openapi.json: if the spec stops describing what a client needs (typed
// request bodies, integer `limit`, status enums, problem+json errors), this
// stops compiling. Checked by tsc in CI (.ci/openapi-checks); never run.

import type { components, operations, paths } from "./generated/agora";

type Schemas = components["schemas"];
type PlaceOrder = paths["/api/v1/orders"]["post"]["requestBody"]["content"]["application/json"];
type Order = paths["/api/v1/orders"]["post"]["responses"][201]["content"]["application/json"];
type OrderProblem = paths["/api/v1/orders"]["post"]["responses"][422]["content"]["application/problem+json"];
type ListOrdersQuery = NonNullable<operations["list_orders"]["parameters"]["query"]>;
type Stock = operations["get_stock"]["responses"][200]["content"]["application/json"];

const statuses: Schemas["OrderStatus"][] = [
  "pending", "awaiting_payment", "confirmed", "shipped", "delivered", "rejected", "payment_failed", "cancelled",
];
// @ts-expect-error an order status is one of the enum's values, not any string
const notAStatus: Schemas["OrderStatus"] = "lost";
// @ts-expect-error `limit` is an integer
const notALimit: ListOrdersQuery["limit"] = "20";
const firstPage: ListOrdersQuery = { status: "confirmed", limit: 20 };
// @ts-expect-error a notification status is one of the enum's values
const notANotificationStatus: Schemas["NotificationBody"]["status"] = "lost";

async function call<T>(base: string, token: string, method: string, path: string, body?: unknown, key?: string): Promise<T> {
  const headers: Record<string, string> = { authorization: `Bearer ${token}`, "content-type": "application/json" };
  if (key !== undefined) headers["idempotency-key"] = key;
  const res = await fetch(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!res.ok) {
    const problem = (await res.json()) as Schemas["Problem"];
    throw new Error(`${problem.status} ${problem.title}: ${problem.detail}`);
  }
  return (await res.json()) as T;
}

export async function placeAndShip(base: string, customer: string, staff: string): Promise<Schemas["OrderStatus"]> {
  const body: PlaceOrder = {
    items: [{ sku: "TSHIRT-RED-M", quantity: 2 }],
    shipping_address: { name: "Alice", line1: "1 Main St", city: "Berlin", postal_code: "10115", country: "DE" },
    payment_method: "tok_visa",
  };
  const order = await call<Order>(base, customer, "POST", "/api/v1/orders", body, `order-${Date.now()}`);
  const total: number = order.total_minor;
  const firstSku: string = order.items[0].sku;
  const stock = await call<Stock>(base, staff, "GET", `/api/v1/stock/${firstSku}`);
  const perWarehouse: number[] = stock.warehouses.map((w) => w.available);
  const shipped = await call<Order>(base, staff, "POST", `/api/v1/orders/${order.id}/ship`);
  void total, perWarehouse;
  return shipped.status;
}

export function fieldErrors(problem: OrderProblem): string[] {
  return Object.keys(problem.errors ?? {});
}

export const used = [statuses, notAStatus, notALimit, firstPage, notANotificationStatus];
