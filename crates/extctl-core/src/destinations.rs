//! Which addresses outbound calls (pings and notifications) may connect to.
//!
//! A control's `externalUrl` and its notification URLs are written by whoever may edit
//! controls in a namespace, and extctl connects to them from inside the cluster: without a
//! rule, a namespace user could make extctl POST to the Kubernetes API server, to a cloud's
//! metadata service or to anything on the node's link-local network (server-side request
//! forgery). The rules are applied to every address a URL's host resolves to, at connect time,
//! so a name that resolves differently later (DNS rebinding) gains nothing.
//!
//! The decision, in order:
//! 1. an address matching `--outbound-deny` is refused;
//! 2. one matching `--outbound-allow` is permitted;
//! 3. one in the built-in deny list (link-local, cloud metadata, unspecified, the Kubernetes
//!    API server's addresses) is refused;
//! 4. any other is permitted, unless `--outbound-allow` was given (then only what it lists).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// One rule: a network (`10.0.0.0/8`, `fd00::/8`, a bare address) or one socket address
/// (`10.96.0.1:443`, `[fd00::1]:443`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Network(IpNet),
    Socket(SocketAddr),
}

impl Rule {
    fn matches(&self, address: SocketAddr) -> bool {
        let ip = canonical(address.ip());
        match self {
            Self::Network(net) => net.contains(&ip),
            Self::Socket(socket) => canonical(socket.ip()) == ip && socket.port() == address.port(),
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return Ok(Self::Socket(socket));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Network(IpNet::from(ip)));
        }
        text.parse::<IpNet>().map(Self::Network).map_err(|_| {
            format!(
                "{text:?} is not a network or address: expected a CIDR (10.0.0.0/8, fd00::/8), \
                 an IP address (10.1.2.3) or an address with a port (10.96.0.1:443, [fd00::1]:443)"
            )
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network(net) => write!(f, "{net}"),
            Self::Socket(socket) => write!(f, "{socket}"),
        }
    }
}

/// Why the built-in list refuses an address, as told in `status.lastPing.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protected {
    LinkLocal,
    CloudMetadata,
    Unspecified,
    ApiServer,
}

impl Protected {
    fn describe(self) -> &'static str {
        match self {
            Self::LinkLocal => "a link-local address",
            Self::CloudMetadata => "a cloud metadata service",
            Self::Unspecified => "an unspecified address",
            Self::ApiServer => "the Kubernetes API server",
        }
    }
}

/// The networks refused unless `--outbound-allow` names them: link-local (where AWS, GCP and
/// Azure serve instance metadata, 169.254.169.254), the metadata addresses outside it
/// (Alibaba's, AWS's IPv6 one) and the unspecified address (which connects to this host).
const BUILT_IN: &[(&str, Protected)] = &[
    ("169.254.0.0/16", Protected::LinkLocal),
    ("fe80::/10", Protected::LinkLocal),
    ("100.100.100.200/32", Protected::CloudMetadata),
    ("fd00:ec2::254/128", Protected::CloudMetadata),
    ("0.0.0.0/32", Protected::Unspecified),
    ("::/128", Protected::Unspecified),
];

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Denied(Rule),
    Protected(Protected),
    NotAllowed,
}

/// The rules, as the operator was started with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    pub deny: Vec<Rule>,
    pub allow: Vec<Rule>,
    /// The API server's addresses (from the kubeconfig and `KUBERNETES_SERVICE_HOST`).
    pub api_server: Vec<Rule>,
}

impl DestinationPolicy {
    /// Whether an outbound call may connect to `address`, or why not.
    pub fn check(&self, address: SocketAddr) -> Result<(), Refusal> {
        if let Some(rule) = self.deny.iter().find(|r| r.matches(address)) {
            return Err(Refusal::Denied(*rule));
        }
        if self.allow.iter().any(|r| r.matches(address)) {
            return Ok(());
        }
        if let Some(protected) = self.protected(address) {
            return Err(Refusal::Protected(protected));
        }
        if self.allow.is_empty() {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    fn protected(&self, address: SocketAddr) -> Option<Protected> {
        if self.api_server.iter().any(|r| r.matches(address)) {
            return Some(Protected::ApiServer);
        }
        BUILT_IN.iter().find_map(|(net, why)| {
            let rule = Rule::Network(net.parse().expect("the built-in networks parse"));
            rule.matches(address).then_some(*why)
        })
    }

    /// The addresses among `resolved` that may be connected to, or, when none may, one line
    /// saying why (for `status.lastPing.error` and the Warning Event).
    pub fn permitted(
        &self,
        host: &str,
        resolved: &[SocketAddr],
    ) -> Result<Vec<SocketAddr>, String> {
        let mut permitted = Vec::new();
        let mut refused = Vec::new();
        for address in resolved {
            match self.check(*address) {
                Ok(()) => permitted.push(*address),
                Err(why) => refused.push(format!("{address} is {}", self.explain(&why))),
            }
        }
        if permitted.is_empty() {
            let why = if refused.is_empty() {
                "it resolves to no address".to_owned()
            } else {
                refused.join("; ")
            };
            return Err(format!("destination {host} refused: {why}"));
        }
        Ok(permitted)
    }

    fn explain(&self, refusal: &Refusal) -> String {
        match refusal {
            Refusal::Denied(rule) => format!("denied by --outbound-deny {rule}"),
            Refusal::Protected(what) => format!(
                "{} (refused unless --outbound-allow lists it)",
                what.describe()
            ),
            Refusal::NotAllowed => "not in --outbound-allow".to_owned(),
        }
    }
}

/// `url` as it may be shown in Events and output: without user info, query and fragment,
/// where credentials for a checker's endpoint would be.
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "(an invalid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_carry_no_credentials() {
        assert_eq!(
            shown_url("https://bot:s3cret@checker.example.com/ping?token=abc#x"),
            "https://checker.example.com/ping"
        );
        assert_eq!(shown_url("http://127.0.0.1:9/p"), "http://127.0.0.1:9/p");
        assert_eq!(shown_url("not a url"), "(an invalid URL)");
    }

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn rules(texts: &[&str]) -> Vec<Rule> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn api_server() -> DestinationPolicy {
        DestinationPolicy {
            api_server: rules(&["10.96.0.1:443", "127.0.0.1:6443"]),
            ..Default::default()
        }
    }

    #[test]
    fn rules_parse_as_networks_addresses_and_sockets() {
        assert_eq!(
            "10.0.0.0/8".parse::<Rule>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3".parse::<Rule>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            "[fd00::1]:443".parse::<Rule>().unwrap().to_string(),
            "[fd00::1]:443"
        );
        assert_eq!("fd00::/8".parse::<Rule>().unwrap().to_string(), "fd00::/8");
        assert_eq!(
            " 10.96.0.1:443 ".parse::<Rule>(),
            Ok(Rule::Socket(at("10.96.0.1:443")))
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "example.com",
            "10.0.0.1:99999",
            "fd00::1:443:x",
        ] {
            let error = bad.parse::<Rule>().unwrap_err();
            assert!(
                error.contains("is not a network or address"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn by_default_metadata_link_local_unspecified_and_the_api_server_are_refused() {
        let policy = api_server();
        let refused = [
            ("169.254.169.254:80", Protected::LinkLocal),
            ("[::ffff:169.254.169.254]:80", Protected::LinkLocal),
            ("[fe80::1]:80", Protected::LinkLocal),
            ("100.100.100.200:80", Protected::CloudMetadata),
            ("[fd00:ec2::254]:80", Protected::CloudMetadata),
            ("0.0.0.0:80", Protected::Unspecified),
            ("[::]:80", Protected::Unspecified),
            ("10.96.0.1:443", Protected::ApiServer),
            ("127.0.0.1:6443", Protected::ApiServer),
        ];
        for (address, why) in refused {
            assert_eq!(
                policy.check(at(address)),
                Err(Refusal::Protected(why)),
                "{address}"
            );
        }
        // The API server is one socket address: the same host's other ports are not it.
        for permitted in [
            "10.96.0.1:80",
            "127.0.0.1:8080",
            "10.0.0.5:443",
            "[2001:db8::1]:443",
        ] {
            assert_eq!(policy.check(at(permitted)), Ok(()), "{permitted}");
        }
    }

    #[test]
    fn deny_comes_first_then_allow_then_the_built_in_list() {
        let policy = DestinationPolicy {
            deny: rules(&["10.0.0.0/8"]),
            allow: rules(&["10.1.0.0/16", "169.254.10.10", "127.0.0.1:6443"]),
            ..api_server()
        };
        // Denied although also allowed: deny wins.
        assert_eq!(
            policy.check(at("10.1.2.3:80")),
            Err(Refusal::Denied("10.0.0.0/8".parse().unwrap()))
        );
        // An explicit allow opens a built-in refusal, exactly as far as it reaches.
        assert_eq!(policy.check(at("169.254.10.10:80")), Ok(()));
        assert_eq!(policy.check(at("127.0.0.1:6443")), Ok(()));
        assert_eq!(
            policy.check(at("169.254.169.254:80")),
            Err(Refusal::Protected(Protected::LinkLocal))
        );
        // With an allow list, what it does not list is refused.
        assert_eq!(policy.check(at("192.0.2.1:443")), Err(Refusal::NotAllowed));
    }

    #[test]
    fn only_the_permitted_addresses_of_a_name_are_connected_to() {
        let policy = DestinationPolicy {
            deny: rules(&["192.0.2.0/24"]),
            ..api_server()
        };
        let resolved = [at("192.0.2.7:443"), at("198.51.100.7:443")];
        assert_eq!(
            policy.permitted("checker.example", &resolved),
            Ok(vec![at("198.51.100.7:443")])
        );
        let error = policy
            .permitted(
                "meta.example",
                &[at("169.254.169.254:80"), at("192.0.2.7:80")],
            )
            .unwrap_err();
        assert_eq!(
            error,
            "destination meta.example refused: 169.254.169.254:80 is a link-local address \
             (refused unless --outbound-allow lists it); 192.0.2.7:80 is denied by \
             --outbound-deny 192.0.2.0/24"
        );
        assert_eq!(
            policy.permitted("nowhere.example", &[]).unwrap_err(),
            "destination nowhere.example refused: it resolves to no address"
        );
        let only = DestinationPolicy {
            allow: rules(&["10.0.0.0/8"]),
            ..Default::default()
        };
        assert_eq!(
            only.permitted("127.0.0.1", &[at("127.0.0.1:9")])
                .unwrap_err(),
            "destination 127.0.0.1 refused: 127.0.0.1:9 is not in --outbound-allow"
        );
    }
}
