//! Delivery-time vetting of callback addresses: the callback client's DNS resolver
//! ([`VettingResolver`]). It resolves the callback host, keeps only the addresses the rules of
//! [`crate::address`] allow, and hands exactly those to the connection, so there is no window
//! between checking an address and connecting to it (DNS rebinding). When no address is
//! allowed it fails with a [`Refused`] error, which the sender finds in the error chain
//! ([`refusal`]) and records as a refused attempt: the delivery ends `failed`.
//!
//! IP-literal hosts never reach a resolver; [`crate::address::check_callback_url`] vets them
//! before each attempt.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::address::{HostMatch, host_match, vet_address};

/// A refused callback address; its text is the delivery's `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A future of the addresses a name resolves to.
pub type Lookup = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves a host name to addresses: the system resolver in service, a table in tests.
pub trait Lookups: Send + Sync + 'static {
    fn lookup(&self, host: &str) -> Lookup;
}

/// The system resolver (`getaddrinfo`, through tokio).
pub struct SystemLookup;

impl Lookups for SystemLookup {
    fn lookup(&self, host: &str) -> Lookup {
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// The callback client's resolver: resolve, vet, return only vetted addresses.
pub struct VettingResolver {
    hosts: Arc<[String]>,
    networks: Arc<[IpNet]>,
    lookups: Arc<dyn Lookups>,
}

impl VettingResolver {
    /// With the `callbacks.allowed_hosts` and `callbacks.allowed_networks` of the config.
    pub fn new(hosts: &[String], networks: &[IpNet], lookups: Arc<dyn Lookups>) -> Self {
        VettingResolver {
            hosts: hosts.into(),
            networks: networks.into(),
            lookups,
        }
    }

    /// The addresses `host` may be connected to, or why none.
    pub async fn vetted(&self, host: &str) -> Result<Vec<IpAddr>, Refused> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let how = host_match(&host, &self.hosts);
        if how == HostMatch::No {
            return Err(Refused(format!(
                "callback host {host} is not in callbacks.allowed_hosts"
            )));
        }
        let found = self
            .lookups
            .lookup(&host)
            .await
            .map_err(|e| Refused(format!("callback host {host} could not be resolved: {e}")))?;
        let mut first_refusal = None;
        let mut vetted = Vec::new();
        for ip in found {
            match vet_address(&host, ip, how, &self.networks) {
                Ok(()) => vetted.push(ip),
                Err(why) => {
                    first_refusal.get_or_insert(why);
                }
            }
        }
        if vetted.is_empty() {
            return Err(Refused(first_refusal.unwrap_or_else(|| {
                format!("callback host {host} resolved to no address")
            })));
        }
        Ok(vetted)
    }
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let me = VettingResolver {
            hosts: self.hosts.clone(),
            networks: self.networks.clone(),
            lookups: self.lookups.clone(),
        };
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = me.vetted(&host).await?;
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The [`Refused`] somewhere in an error's chain of sources, if any.
pub fn refusal<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a Refused> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A resolver that answers from a table that tests can change between lookups.
    struct Table(Mutex<HashMap<String, Vec<IpAddr>>>);

    impl Lookups for Table {
        fn lookup(&self, host: &str) -> Lookup {
            let r = self.0.lock().unwrap().get(host).cloned();
            Box::pin(async move {
                r.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
            })
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn resolver(table: &[(&str, &[&str])], hosts: &[&str], nets: &[&str]) -> VettingResolver {
        let t = table.iter().map(|(h, a)| (h.to_string(), ips(a))).collect();
        VettingResolver::new(
            &hosts.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &nets.iter().map(|n| n.parse().unwrap()).collect::<Vec<_>>(),
            Arc::new(Table(Mutex::new(t))),
        )
    }

    #[tokio::test]
    async fn only_vetted_addresses_are_returned() {
        let r = resolver(
            &[
                ("hooks.example.com", &["10.0.0.5"]),
                ("mixed.example.com", &["10.0.0.5", "93.184.216.34", "::1"]),
                ("pub.example.com", &["93.184.216.34"]),
                ("app.internal", &["10.0.0.5"]),
            ],
            &["*.example.com", "app.internal"],
            &[],
        );
        assert_eq!(
            r.vetted("hooks.example.com").await,
            Err(Refused(
                "callback host hooks.example.com resolved to 10.0.0.5, a private address; add \
                 it (e.g. \"10.0.0.5/32\") to callbacks.allowed_networks, or name \
                 hooks.example.com in callbacks.allowed_hosts, to allow it"
                    .into()
            ))
        );
        // Only the public address of a name that also resolves to private ones.
        assert_eq!(
            r.vetted("mixed.example.com").await,
            Ok(ips(&["93.184.216.34"]))
        );
        assert_eq!(
            r.vetted("pub.example.com").await,
            Ok(ips(&["93.184.216.34"]))
        );
        // Named exactly: any address.
        assert_eq!(r.vetted("app.internal").await, Ok(ips(&["10.0.0.5"])));
        assert!(r.vetted("other.org").await.is_err());
        let e = r.vetted("gone.example.com").await.unwrap_err();
        assert!(e.0.contains("could not be resolved"), "{e}");
    }

    #[tokio::test]
    async fn allowed_networks_admit_their_addresses() {
        let r = resolver(
            &[("cb.localhost", &["127.0.0.1", "::1"])],
            &["*.localhost"],
            &["127.0.0.0/8"],
        );
        assert_eq!(r.vetted("cb.localhost").await, Ok(ips(&["127.0.0.1"])));
    }

    #[tokio::test]
    async fn each_resolution_is_vetted_again() {
        // DNS rebinding: the name is public at first, then points at the metadata service.
        let table = Arc::new(Table(Mutex::new(HashMap::from([(
            "cb.example.com".to_string(),
            ips(&["93.184.216.34"]),
        )]))));
        let r = VettingResolver::new(&["*".to_string()], &[], table.clone());
        assert!(r.vetted("cb.example.com").await.is_ok());
        table
            .0
            .lock()
            .unwrap()
            .insert("cb.example.com".into(), ips(&["169.254.169.254"]));
        let e = r.vetted("cb.example.com").await.unwrap_err();
        assert!(e.0.contains("a cloud metadata address"), "{e}");
    }

    #[test]
    fn a_refusal_is_found_in_an_error_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Box<dyn StdError + Send + Sync>);
        let e = Outer(Box::new(Refused("no".into())));
        assert_eq!(refusal(&e), Some(&Refused("no".into())));
        let plain = Outer(Box::new(io::Error::other("x")));
        assert_eq!(refusal(&plain), None);
    }
}
