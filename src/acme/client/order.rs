//! One order (RFC 8555 §7.4): new order, answer every pending
//! authorization, wait until the answers are visible, tell the CA, wait
//! for validation, finalize with a fresh key, download the chain. The
//! answers put in place are listed in `placed`, which the caller clears
//! up afterwards whatever happened (even when it dropped the order).

use crate::acme::challenge::{Placed, Solver};
use crate::acme::problem::{self, Failure, HintCtx};
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, Identifier, NewOrder, Order, OrderStatus,
    RetryPolicy,
};
use std::time::Duration;

pub struct Issued {
    /// PEM, leaf first.
    pub fullchain: String,
    /// PEM (PKCS#8, ECDSA P-256).
    pub key: String,
}

/// How long the CA may take to validate, and to issue.
const VALIDATION: Duration = Duration::from_secs(120);
const ISSUANCE: Duration = Duration::from_secs(90);

pub async fn issue(
    account: &Account,
    names: &[String],
    solver: &Solver,
    hint: &HintCtx<'_>,
    replaces: Option<CertificateIdentifier<'static>>,
    placed: &mut Vec<Placed>,
) -> Result<Issued, Failure> {
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut new = NewOrder::new(&ids);
    if let Some(r) = replaces {
        new = new.replaces(r);
    }
    let acme = |e: instant_acme::Error| problem::from_acme(&e, hint);
    let mut order = account.new_order(&new).await.map_err(acme)?;
    drive(&mut order, solver, hint, placed).await
}

async fn drive(
    order: &mut Order,
    solver: &Solver,
    hint: &HintCtx<'_>,
    placed: &mut Vec<Placed>,
) -> Result<Issued, Failure> {
    let acme = |e: instant_acme::Error| problem::from_acme(&e, hint);
    let kind = solver.challenge_type();
    // First every answer is put in place, so a wildcard and its apex
    // both have their TXT value before the CA looks at either.
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(acme)?;
        let name = identifier_name(a.identifier().identifier)?;
        match a.status {
            AuthorizationStatus::Pending => {}
            // Reused from an earlier order (RFC 8555 §7.1.4).
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(Failure::new(
                    "authorization",
                    format!("the authorization for {name} is {other:?}"),
                    "drowsy starts over with a new order later",
                ))
            }
        }
        let ch = a.challenge(kind.clone()).ok_or_else(|| {
            Failure::new(
                "challenge",
                format!(
                    "the CA offers no {} challenge for {name}",
                    solver.kind.as_str()
                ),
                "choose another acme.challenge",
            )
        })?;
        let key = ch.key_authorization();
        placed.push(solver.present(&name, &ch.token, &key).await?);
    }
    solver.settle(placed).await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(acme)?;
        if a.status != AuthorizationStatus::Pending {
            continue;
        }
        if let Some(mut ch) = a.challenge(kind.clone()) {
            ch.set_ready().await.map_err(acme)?;
        }
    }
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION);
    match order.poll_ready(&policy).await {
        Ok(OrderStatus::Ready) => {}
        Ok(_) => return Err(why_invalid(order, hint).await),
        Err(e) => {
            let f = why_invalid(order, hint).await;
            return Err(if f.kind == "authorization" {
                acme(e)
            } else {
                f
            });
        }
    }
    let key = order.finalize().await.map_err(acme)?;
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(ISSUANCE);
    let fullchain = order.poll_certificate(&policy).await.map_err(acme)?;
    Ok(Issued { fullchain, key })
}

fn identifier_name(id: &Identifier) -> Result<String, Failure> {
    match id {
        Identifier::Dns(name) => Ok(name.clone()),
        other => Err(Failure::new(
            "authorization",
            format!("unexpected identifier {other:?}"),
            "see the detail",
        )),
    }
}

/// The first challenge error the CA recorded, naming its identifier: the
/// CA's reason is far more useful than "order invalid".
async fn why_invalid(order: &mut Order, hint: &HintCtx<'_>) -> Failure {
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let Ok(mut a) = a else { continue };
        if a.refresh().await.is_err() {
            continue;
        }
        let name = identifier_name(a.identifier().identifier).unwrap_or_default();
        if let Some(p) = a.challenges.iter().find_map(|c| c.error.as_ref()) {
            let mut f = problem::from_problem(p, hint);
            f.detail = format!("{name}: {}", f.detail);
            return f;
        }
        if a.status == AuthorizationStatus::Invalid {
            return Failure::new(
                "authorization",
                format!("the authorization for {name} is invalid"),
                "see the CA's logs",
            );
        }
    }
    Failure::new(
        "authorization",
        "the order became invalid without a reason",
        "see the detail",
    )
}
