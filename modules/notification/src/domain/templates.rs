//! Message templates (minijinja), one set per event kind and channel: an e-mail
//! subject, text body and HTML body (both extending a shared layout with the
//! order's lines and total), an SMS text and a push text. Amounts are formatted
//! with their currency's exponent (`12.50 EUR`, `1200 JPY`).

use agora_kernel::{Currency, Money};
use anyhow::Context;
use minijinja::Environment;
use serde::Serialize;

use super::models::{
    Channel, OrderEventPayload, PaymentRefundedPayload, RenderedMessage, Template,
};

/// What a template sees.
#[derive(Debug, Clone, Serialize)]
pub struct MessageContext {
    pub order_id: String,
    pub status: String,
    pub reason: Option<String>,
    pub items: Vec<ItemContext>,
    pub total: String,
    pub currency: String,
    /// `payment.refunded.v1` only.
    pub payment_id: Option<String>,
    pub refunded: Option<String>,
    pub paid: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemContext {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: String,
    pub line_total: String,
}

/// `12.50 EUR`; an unknown currency shows its minor units and code.
pub fn format_money(minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(c) => Money::new(minor, c).display(),
        Err(_) => format!("{minor} (minor units) {currency}"),
    }
}

impl MessageContext {
    pub fn from_order(p: &OrderEventPayload) -> Self {
        Self {
            order_id: p.order_id.to_string(),
            status: p.status.clone(),
            reason: p.reason.clone().filter(|r| !r.trim().is_empty()),
            items: p
                .items
                .iter()
                .map(|i| ItemContext {
                    sku: i.sku.clone(),
                    quantity: i.quantity,
                    unit_price: format_money(i.unit_price_minor, &p.currency),
                    line_total: format_money(i.line_total_minor, &p.currency),
                })
                .collect(),
            total: format_money(p.total_minor, &p.currency),
            currency: p.currency.clone(),
            payment_id: None,
            refunded: None,
            paid: None,
        }
    }

    pub fn from_refund(p: &PaymentRefundedPayload) -> Self {
        Self {
            order_id: p.order_id.to_string(),
            status: "refunded".to_owned(),
            reason: None,
            items: vec![],
            total: format_money(p.amount_minor, &p.currency),
            currency: p.currency.clone(),
            payment_id: Some(p.payment_id.to_string()),
            refunded: Some(format_money(p.refunded_minor, &p.currency)),
            paid: Some(format_money(p.amount_minor, &p.currency)),
        }
    }
}

const LAYOUT_TXT: &str = "Hello,

{% block intro %}{% endblock %}

Order: {{ order_id }}
Status: {{ status }}
{%- if reason %}
Reason: {{ reason }}
{%- endif %}
{%- if items %}

Items:
{%- for item in items %}
  {{ item.quantity }} x {{ item.sku }} at {{ item.unit_price }} = {{ item.line_total }}
{%- endfor %}
{%- endif %}

Total: {{ total }}
{%- if refunded %}
Refunded: {{ refunded }}
{%- endif %}

Thank you for shopping with agora.
";

const LAYOUT_HTML: &str = r#"<!doctype html>
<html><body style="font-family: sans-serif">
<p>Hello,</p>
<p>{% block intro %}{% endblock %}</p>
<p>Order: <strong>{{ order_id }}</strong><br>Status: {{ status }}{% if reason %}<br>Reason: {{ reason }}{% endif %}</p>
{%- if items %}
<table>
<tr><th align="left">Item</th><th align="right">Quantity</th><th align="right">Unit price</th><th align="right">Total</th></tr>
{%- for item in items %}
<tr><td>{{ item.sku }}</td><td align="right">{{ item.quantity }}</td><td align="right">{{ item.unit_price }}</td><td align="right">{{ item.line_total }}</td></tr>
{%- endfor %}
</table>
{%- endif %}
<p>Total: <strong>{{ total }}</strong>{% if refunded %}<br>Refunded: <strong>{{ refunded }}</strong>{% endif %}</p>
<p>Thank you for shopping with agora.</p>
</body></html>
"#;

/// Per kind: subject, intro sentence (text and HTML share it), SMS, push.
fn sources(t: Template) -> (&'static str, &'static str, &'static str, &'static str) {
    match t {
        Template::OrderConfirmed => (
            "Your order {{ order_id }} is confirmed",
            "Thank you! We received your payment and confirmed your order.",
            "agora: order {{ order_id }} confirmed, total {{ total }}.",
            "Order confirmed: {{ total }}",
        ),
        Template::OrderPaymentFailed => (
            "Payment failed for your order {{ order_id }}",
            "We could not take the payment for your order, so it was not placed.",
            "agora: payment for order {{ order_id }} failed{% if reason %} ({{ reason }}){% endif %}.",
            "Payment failed for your order of {{ total }}",
        ),
        Template::OrderRejected => (
            "We could not accept your order {{ order_id }}",
            "We are sorry: we could not accept your order.",
            "agora: order {{ order_id }} rejected{% if reason %} ({{ reason }}){% endif %}.",
            "Order rejected",
        ),
        Template::OrderCancelled => (
            "Your order {{ order_id }} is cancelled",
            "Your order has been cancelled. Any payment taken will be refunded.",
            "agora: order {{ order_id }} cancelled.",
            "Order cancelled",
        ),
        Template::OrderShipped => (
            "Your order {{ order_id }} is on its way",
            "Good news: your order has shipped.",
            "agora: order {{ order_id }} shipped.",
            "Your order is on its way",
        ),
        Template::OrderDelivered => (
            "Your order {{ order_id }} was delivered",
            "Your order has been delivered. Enjoy!",
            "agora: order {{ order_id }} delivered.",
            "Order delivered",
        ),
        Template::PaymentRefunded => (
            "Refund of {{ refunded }} for your order {{ order_id }}",
            "We refunded {{ refunded }} of your payment of {{ paid }}. It may take a few days to appear on your statement.",
            "agora: {{ refunded }} refunded for order {{ order_id }}.",
            "Refund of {{ refunded }} issued",
        ),
    }
}

/// The compiled templates.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compile every template.
    ///
    /// # Errors
    /// A template that does not compile (a bug caught by the unit tests).
    pub fn new() -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template("layout.email.txt", LAYOUT_TXT)
            .context("layout.email.txt")?;
        env.add_template("layout.email.html", LAYOUT_HTML)
            .context("layout.email.html")?;
        for t in Template::ALL {
            let (subject, intro, sms, push) = sources(t);
            let name = t.as_str();
            let body = |layout: &str| {
                format!("{{% extends \"{layout}\" %}}{{% block intro %}}{intro}{{% endblock %}}")
            };
            env.add_template_owned(format!("{name}.email.subject"), subject.to_owned())?;
            env.add_template_owned(format!("{name}.email.txt"), body("layout.email.txt"))?;
            env.add_template_owned(format!("{name}.email.html"), body("layout.email.html"))?;
            env.add_template_owned(format!("{name}.sms.txt"), sms.to_owned())?;
            env.add_template_owned(format!("{name}.push.txt"), push.to_owned())?;
        }
        Ok(Self { env })
    }

    fn one(&self, name: &str, ctx: &MessageContext) -> anyhow::Result<String> {
        self.env
            .get_template(name)
            .with_context(|| format!("no template {name}"))?
            .render(ctx)
            .with_context(|| format!("failed to render {name}"))
    }

    /// Render the message of `template` for `channel`.
    ///
    /// # Errors
    /// A template that fails to render.
    pub fn render(
        &self,
        template: Template,
        channel: Channel,
        ctx: &MessageContext,
    ) -> anyhow::Result<RenderedMessage> {
        let name = template.as_str();
        Ok(match channel {
            Channel::Email => RenderedMessage {
                subject: Some(self.one(&format!("{name}.email.subject"), ctx)?),
                text: self.one(&format!("{name}.email.txt"), ctx)?,
                html: Some(self.one(&format!("{name}.email.html"), ctx)?),
            },
            Channel::Sms => RenderedMessage {
                subject: None,
                text: self.one(&format!("{name}.sms.txt"), ctx)?,
                html: None,
            },
            Channel::Push => RenderedMessage {
                subject: None,
                text: self.one(&format!("{name}.push.txt"), ctx)?,
                html: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::models::OrderItemPayload;

    fn order() -> OrderEventPayload {
        OrderEventPayload {
            order_id: uuid::Uuid::nil(),
            customer_id: "alice".into(),
            customer_email: Some("alice@example.com".into()),
            status: "confirmed".into(),
            items: vec![OrderItemPayload {
                sku: "MUG-<1>".into(),
                quantity: 2,
                unit_price_minor: 1250,
                line_total_minor: 2500,
            }],
            total_minor: 2500,
            currency: "EUR".into(),
            reason: None,
        }
    }

    #[test]
    fn every_template_renders_on_every_channel() {
        let t = Templates::new().unwrap_or_else(|e| panic!("{e:#}"));
        let ctx = MessageContext::from_order(&order());
        let refund = MessageContext::from_refund(&PaymentRefundedPayload {
            payment_id: uuid::Uuid::nil(),
            order_id: uuid::Uuid::nil(),
            customer_id: "alice".into(),
            amount_minor: 2500,
            refunded_minor: 1000,
            currency: "JPY".into(),
        });
        for template in Template::ALL {
            for channel in Channel::ALL {
                let ctx = if template == Template::PaymentRefunded {
                    &refund
                } else {
                    &ctx
                };
                let m = t
                    .render(template, channel, ctx)
                    .unwrap_or_else(|e| panic!("{template:?}/{channel}: {e:#}"));
                assert!(!m.text.is_empty());
            }
        }
    }

    #[test]
    fn an_email_names_the_order_its_items_and_its_total_in_its_currency() {
        let t = Templates::new().unwrap_or_else(|e| panic!("{e:#}"));
        let m = t
            .render(
                Template::OrderConfirmed,
                Channel::Email,
                &MessageContext::from_order(&order()),
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        let nil = uuid::Uuid::nil().to_string();
        assert_eq!(
            m.subject.as_deref(),
            Some(format!("Your order {nil} is confirmed").as_str())
        );
        assert!(m.text.contains(&nil));
        assert!(
            m.text.contains("2 x MUG-<1> at 12.50 EUR = 25.00 EUR"),
            "{}",
            m.text
        );
        assert!(m.text.contains("Total: 25.00 EUR"));
        assert!(m.text.contains("Status: confirmed"));
        let html = m.html.unwrap_or_default();
        assert!(html.contains("MUG-&lt;1&gt;"), "HTML is escaped: {html}");
        assert!(html.contains("25.00 EUR"));
    }

    #[test]
    fn a_refund_is_formatted_with_the_currency_exponent() {
        assert_eq!(format_money(1200, "JPY"), "1200 JPY");
        assert_eq!(format_money(1234, "KWD"), "1.234 KWD");
        assert_eq!(format_money(5, "XXX"), "5 (minor units) XXX");
    }
}
