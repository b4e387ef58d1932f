//! The error-reporting settings (`OPR_PROXY_LOGGING_*`): the provider, its DSN or older
//! key form, the endpoint override. config.rs calls `parse` and turns a `Rejected` into
//! its `ConfigError` (exit 2), so this module imports nothing of config.rs.

use std::fmt;

pub(crate) const OPR_PROXY_LOGGING_PROVIDER: &str = "OPR_PROXY_LOGGING_PROVIDER";
pub(crate) const OPR_PROXY_LOGGING_CONFIG: &str = "OPR_PROXY_LOGGING_CONFIG";
pub(crate) const OPR_PROXY_LOGGING_ENDPOINT: &str = "OPR_PROXY_LOGGING_ENDPOINT";

/// The lookup and the rules shared with other variables, lent by config.rs.
pub(crate) struct Lookup<'a> {
    /// The trimmed value; `None` when unset or blank.
    pub get: &'a dyn Fn(&str) -> Option<String>,
    /// `host[:port]` by the rules of an executor's: the reason when it is not one.
    pub host_port: fn(&str) -> Result<(), String>,
    /// An `http://` or `https://` URL with a host.
    pub http_url: fn(&str) -> bool,
}

/// A rejected value: the variable, the value as it may be shown, what is allowed.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub variable: &'static str,
    pub value: String,
    pub allowed: String,
}

impl Rejected {
    fn new(variable: &'static str, value: &str, allowed: impl Into<String>) -> Rejected {
        Rejected {
            variable,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoggingProvider {
    Sentry,
    AppSignal,
    Raygun,
    LogOwl,
}

impl LoggingProvider {
    /// The `OPR_PROXY_LOGGING_PROVIDER` word, which is also its DSN scheme.
    pub fn name(self) -> &'static str {
        match self {
            LoggingProvider::Sentry => "sentry",
            LoggingProvider::AppSignal => "appsignal",
            LoggingProvider::Raygun => "raygun",
            LoggingProvider::LogOwl => "logowl",
        }
    }
}

/// Where error reports go (docs/behaviour.md §8), from `OPR_PROXY_LOGGING_PROVIDER`,
/// `OPR_PROXY_LOGGING_CONFIG` and `OPR_PROXY_LOGGING_ENDPOINT`.
#[derive(Clone, PartialEq, Eq)]
pub struct ReportingConfig {
    pub provider: LoggingProvider,
    /// Sentry key, AppSignal or Raygun API key, LogOwl ticket.
    pub key: String,
    /// Sentry only.
    pub project_id: Option<String>,
    /// `host` or `host:port` from a sentry or logowl DSN, reached over https; `None` = the
    /// provider's own.
    pub host: Option<String>,
    /// `OPR_PROXY_LOGGING_ENDPOINT` without a trailing `/`: replaces the provider's base URL.
    pub endpoint: Option<String>,
}

// Written out so that logging the config never prints the key.
impl fmt::Debug for ReportingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportingConfig")
            .field("provider", &self.provider)
            .field("key", &"<redacted>")
            .field("project_id", &self.project_id)
            .field("host", &self.host)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

// Empty means no provider, so the words map to `Some`.
pub(crate) const PROVIDERS: [(&str, Option<LoggingProvider>); 4] = [
    ("sentry", Some(LoggingProvider::Sentry)),
    ("appsignal", Some(LoggingProvider::AppSignal)),
    ("raygun", Some(LoggingProvider::Raygun)),
    ("logowl", Some(LoggingProvider::LogOwl)),
];

/// `OPR_PROXY_LOGGING_CONFIG` is first read as a DSN (the provider is its scheme), else
/// in the older form for `named` (`OPR_PROXY_LOGGING_PROVIDER`, docs/behaviour.md §1).
/// Errors never show the key: the value they name is masked.
pub(crate) fn parse(
    lookup: &Lookup<'_>,
    named: Option<LoggingProvider>,
) -> Result<Option<ReportingConfig>, Rejected> {
    let reporting = match ((lookup.get)(OPR_PROXY_LOGGING_CONFIG), named) {
        (None, None) => None,
        (None, Some(provider)) => {
            let allowed = format!(
                "OPR_PROXY_LOGGING_PROVIDER={} needs it: {}",
                provider.name(),
                logging_forms(provider)
            );
            return Err(Rejected::new(OPR_PROXY_LOGGING_CONFIG, "", allowed));
        }
        (Some(config), named) if config.contains("://") => Some(parse_dsn(lookup, &config, named)?),
        (Some(_), None) => {
            let allowed = "OPR_PROXY_LOGGING_CONFIG is not a DSN (scheme://...), so it \
                needs a provider: sentry, appsignal, raygun or logowl";
            return Err(Rejected::new(OPR_PROXY_LOGGING_PROVIDER, "", allowed));
        }
        (Some(config), Some(provider)) => Some(parse_older(&config, provider)?),
    };
    let Some(url) = (lookup.get)(OPR_PROXY_LOGGING_ENDPOINT) else {
        return Ok(reporting);
    };
    let Some(mut reporting) = reporting else {
        let allowed = "it replaces the error reporting provider's base URL, so it needs \
            OPR_PROXY_LOGGING_CONFIG (and a provider)";
        return Err(Rejected::new(OPR_PROXY_LOGGING_ENDPOINT, &url, allowed));
    };
    let authority = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
    if !(lookup.http_url)(&url) || url.contains(['?', '#']) || authority.contains('@') {
        let allowed = "allowed values are http:// or https:// base URLs (host, optional \
            port and path prefix; no user info, query or fragment), or empty for the \
            provider's own";
        return Err(Rejected::new(OPR_PROXY_LOGGING_ENDPOINT, &url, allowed));
    }
    reporting.endpoint = Some(url.trim_end_matches('/').to_string());
    Ok(Some(reporting))
}

/// The forms `OPR_PROXY_LOGGING_CONFIG` takes for `provider`, for error messages.
fn logging_forms(provider: LoggingProvider) -> &'static str {
    match provider {
        LoggingProvider::Sentry => "<key>;<projectId> or sentry://<projectId>:<key>@<host>",
        LoggingProvider::AppSignal => "<key> or appsignal://<key>",
        LoggingProvider::Raygun => "<key> or raygun://<key>",
        LoggingProvider::LogOwl => "<ticket> or logowl://<ticket>@<host>",
    }
}

const DSN_FORMS: &str = "allowed DSNs are sentry://<projectId>:<key>@<host>, \
    logowl://<ticket>@<host>, raygun://<key> and appsignal://<key>";

/// A value holding a key: never printed (blanks or control characters are rejected too,
/// since no key has them and they cannot go into a header).
fn printable(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_graphic())
}

/// `<provider>://...` (docs/behaviour.md §1). `named`: `OPR_PROXY_LOGGING_PROVIDER`, which must then
/// be empty or the same provider.
fn parse_dsn(
    lookup: &Lookup<'_>,
    value: &str,
    named: Option<LoggingProvider>,
) -> Result<ReportingConfig, Rejected> {
    let (scheme, rest) = value.split_once("://").unwrap_or((value, ""));
    let shown_scheme = if scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
        scheme
    } else {
        "<redacted>"
    };
    let masked = format!("{shown_scheme}://<redacted>");
    let bad = |why: &str| {
        let allowed = format!("{why}; {DSN_FORMS}");
        Rejected::new(OPR_PROXY_LOGGING_CONFIG, &masked, allowed)
    };
    let found = PROVIDERS
        .iter()
        .find(|(word, _)| word.eq_ignore_ascii_case(scheme));
    let Some(&(_, Some(provider))) = found else {
        return Err(bad(&format!(
            "{shown_scheme}:// is not a provider (a Sentry project DSN \
             https://<key>@<host>/<projectId> is written sentry://<projectId>:<key>@<host>)"
        )));
    };
    if let Some(named) = named.filter(|n| *n != provider) {
        let allowed = format!(
            "OPR_PROXY_LOGGING_CONFIG is a {0}:// DSN: leave the provider empty or set it to {0}",
            provider.name()
        );
        return Err(Rejected::new(
            OPR_PROXY_LOGGING_PROVIDER,
            named.name(),
            allowed,
        ));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if !printable(rest) {
        return Err(bad("blanks and control characters are not allowed"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad("a path, query or fragment is not allowed"));
    }
    let (key, project_id, host) = dsn_parts(provider, rest, &bad)?;
    if key.is_empty() {
        return Err(bad("the key is empty"));
    }
    if let Some(host) = host {
        // The same rules as an executor's host[:port] (no scheme: `/` is refused above).
        if let Err(why) = (lookup.host_port)(host) {
            return Err(bad(&format!("bad host: {why}")));
        }
    }
    Ok(ReportingConfig {
        provider,
        key: key.to_string(),
        project_id: project_id.map(str::to_string),
        host: host.map(str::to_string),
        endpoint: None,
    })
}

/// A DSN's key, project id and host after `<provider>://`.
fn dsn_parts<'a>(
    provider: LoggingProvider,
    rest: &'a str,
    bad: &dyn Fn(&str) -> Rejected,
) -> Result<DsnParts<'a>, Rejected> {
    Ok(match provider {
        LoggingProvider::Sentry => {
            let (user, host) = rest
                .rsplit_once('@')
                .ok_or_else(|| bad("the sentry DSN has no @<host>"))?;
            let (project, key) = user
                .split_once(':')
                .ok_or_else(|| bad("the sentry DSN needs <projectId>:<key> before the @"))?;
            if project.is_empty() {
                return Err(bad("the sentry project id is empty"));
            }
            (key, Some(project), Some(host))
        }
        LoggingProvider::LogOwl => {
            let (ticket, host) = rest
                .rsplit_once('@')
                .ok_or_else(|| bad("the logowl DSN has no @<host>"))?;
            (ticket, None, Some(host))
        }
        LoggingProvider::AppSignal | LoggingProvider::Raygun => {
            if rest.contains(['@', ':']) {
                return Err(bad("the key may not hold @ or :"));
            }
            (rest, None, None)
        }
    })
}

/// Key, project id, host.
type DsnParts<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

/// The form before DSNs: sentry `<key>;<projectId>`, the others the whole value as key.
fn parse_older(value: &str, provider: LoggingProvider) -> Result<ReportingConfig, Rejected> {
    let bad = |why: &str| {
        let allowed = format!(
            "{why}; for {} the allowed forms are {}",
            provider.name(),
            logging_forms(provider)
        );
        Rejected::new(OPR_PROXY_LOGGING_CONFIG, "<redacted>", allowed)
    };
    if !printable(value) {
        return Err(bad("blanks and control characters are not allowed"));
    }
    let (key, project_id) = match provider {
        LoggingProvider::Sentry => match value.split_once(';') {
            Some((key, project)) if !key.is_empty() && !project.is_empty() => {
                if project.contains(';') {
                    return Err(bad("expected one ; between the key and the project id"));
                }
                (key, Some(project.to_string()))
            }
            _ => return Err(bad("expected <key>;<projectId>, both non-empty")),
        },
        _ => (value, None),
    };
    Ok(ReportingConfig {
        provider,
        key: key.to_string(),
        project_id,
        host: None,
        endpoint: None,
    })
}
