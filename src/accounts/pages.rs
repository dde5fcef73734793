//! The askama templates: one struct per page, and what every page shares.

use askama::Template;

use super::db::User;

/// What the layout needs on every page.
pub struct Page {
    /// The signed-in user's username, for the navigation.
    pub signed_in: Option<String>,
    /// Which navigation entry is the current page.
    pub section: &'static str,
    /// The CSRF token every form carries.
    pub csrf: String,
    /// The registry's pages (tokens, apps) are there to link to.
    pub registry: bool,
    /// Passkeys are on: the page loads the one script (`/login/passkeys.js`).
    pub passkeys: bool,
    /// The signed-in user is an admin: the navigation links the console.
    pub admin: bool,
    /// `--site-name`.
    pub site_name: String,
    /// `--theme` has a style.css (linked after the built-in styles) and a logo.svg.
    pub theme_style: bool,
    pub theme_logo: bool,
}

/// Field errors of a form, by field name.
#[derive(Default)]
pub struct Errors(pub Vec<(&'static str, String)>);

impl Errors {
    pub fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push((field, message.into()));
    }
    pub fn get(&self, field: &str) -> &str {
        self.0
            .iter()
            .find(|(f, _)| *f == field)
            .map_or("", |(_, m)| m.as_str())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct Login {
    pub page: Page,
    pub username: String,
    pub rd: String,
    pub error: String,
    pub notice: String,
    pub registration_open: bool,
    /// A button per `--identity-providers` provider.
    pub providers: Vec<ProviderButton>,
    /// A sign-in asked for again: the providers are asked to sign the person in again too.
    pub again: bool,
}

/// A provider to sign in with: `/login/with/{id}`.
pub struct ProviderButton {
    pub id: String,
    pub name: String,
}

/// A provider on `/account/security`, and the user's identity at it.
pub struct IdentityRow {
    pub id: String,
    pub name: String,
    pub linked: bool,
    pub linked_at: u64,
    pub since: String,
    pub last_used: String,
}

/// `/login/with/{id}/register`: a new account from another provider needs a username (or
/// an email address the provider did not give).
#[derive(Template)]
#[template(path = "federated_register.html")]
pub struct FederatedRegister {
    pub page: Page,
    pub provider_id: String,
    pub provider_name: String,
    pub username: String,
    pub email: String,
    pub ask_email: bool,
    pub error: String,
    pub errors: Errors,
}

impl FederatedRegister {
    fn err(&self, field: &str) -> &str {
        self.errors.get(field)
    }
}

#[derive(Template)]
#[template(path = "passkey_offer.html")]
pub struct PasskeyOffer {
    pub page: Page,
    /// Where the user goes on: after a passkey is made, or "not now".
    pub rd: String,
}

#[derive(Template)]
#[template(path = "register.html")]
pub struct Register {
    pub page: Page,
    pub username: String,
    pub email: String,
    pub name: String,
    pub invite: String,
    pub min_hint: String,
    pub error: String,
    pub errors: Errors,
    /// Another provider instead of a password (`--identity-providers`).
    pub providers: Vec<ProviderButton>,
}

impl Register {
    fn err(&self, field: &str) -> &str {
        self.errors.get(field)
    }
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct Message {
    pub page: Page,
    pub heading: String,
    pub lines: Vec<String>,
    pub link_href: String,
    pub link_text: String,
}

#[derive(Template)]
#[template(path = "logout.html")]
pub struct Logout {
    pub page: Page,
}

#[derive(Template)]
#[template(path = "forgot.html")]
pub struct Forgot {
    pub page: Page,
    pub email: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "reset.html")]
pub struct Reset {
    pub page: Page,
    pub token: String,
    pub min_hint: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "password.html")]
pub struct Password {
    pub page: Page,
    pub min_hint: String,
    pub notice: String,
    pub errors: Errors,
}

impl Password {
    fn err(&self, field: &str) -> &str {
        self.errors.get(field)
    }
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct Account {
    pub page: Page,
    pub user: User,
    pub roles: String,
    pub created: String,
    pub previous_login: String,
    pub new_email: String,
    pub notice: String,
    pub errors: Errors,
}

impl Account {
    fn err(&self, field: &str) -> &str {
        self.errors.get(field)
    }
}

pub struct SessionRow {
    pub sid: String,
    pub device: String,
    pub ip: String,
    pub created: String,
    pub last_seen: String,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "sessions.html")]
pub struct Sessions {
    pub page: Page,
    pub sessions: Vec<SessionRow>,
    pub notice: String,
}

/// `2026-11-30 09:44 UTC` from Unix seconds.
pub fn date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::date(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::date(1_796_031_866), "2026-11-30 09:44 UTC");
        assert_eq!(super::date(951_782_400), "2000-02-29 00:00 UTC");
    }
}

#[derive(Template)]
#[template(path = "second_factor.html")]
pub struct SecondFactor {
    pub page: Page,
    pub rd: String,
    /// `passkey`, `totp` or `recovery`: which way is shown.
    pub method: String,
    /// The other ways the user has, as links.
    pub can_passkey: bool,
    pub can_totp: bool,
    pub can_recovery: bool,
    /// A signed-in user asked for a second factor by a route, not a sign-in.
    pub step_up: bool,
    pub error: String,
}

#[derive(Template)]
#[template(path = "security.html")]
pub struct Security {
    pub page: Page,
    pub passkeys: Vec<PasskeyRow>,
    /// Removing this passkey removes the last second factor: the password is asked.
    pub last_factor: bool,
    pub totp: bool,
    pub recovery_left: u64,
    pub notice: String,
    pub error: String,
    pub password_error: String,
    /// Where a step-up that sent the user here goes once a factor is set up.
    pub rd: String,
    /// With --identity-providers: each provider, linked or not.
    pub identities: Vec<IdentityRow>,
}

/// A passkey as the security page lists it.
pub struct PasskeyRow {
    pub id: String,
    pub name: String,
    pub created: String,
    /// When it last signed in, or "never".
    pub last_used: String,
    pub synced: bool,
}

#[derive(Template)]
#[template(path = "totp_enrol.html")]
pub struct TotpEnrol {
    pub page: Page,
    pub secret: String,
    /// Inline SVG made by `factors::qr_svg` from the secret's URI (no user input in it).
    pub qr_svg: String,
    pub rd: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "recovery_codes.html")]
pub struct RecoveryCodes {
    pub page: Page,
    pub codes: Vec<String>,
    /// Where "I have saved them" goes.
    pub next: String,
    pub notice: String,
}

/// `/account/delete`: what deletion does, and the username typed to confirm it.
#[derive(Template)]
#[template(path = "account_delete.html")]
pub struct AccountDelete {
    pub page: Page,
    pub username: String,
    pub email: String,
    pub error: String,
}

/// The admin console's navigation: its own tabs, the modules' panels (path, title), and a
/// notice or error after an action.
pub struct AdminNav {
    pub section: String,
    pub panels: Vec<(String, String)>,
    pub notice: String,
    pub error: String,
}

pub struct AdminUserRow {
    pub id: String,
    pub username: String,
    pub name: String,
    pub email: String,
    pub roles: String,
    pub status: &'static str,
    pub status_class: &'static str,
    pub created: String,
    pub last_login: String,
}

#[derive(Template)]
#[template(path = "admin_users.html")]
pub struct AdminUsers {
    pub page: Page,
    pub nav: AdminNav,
    pub q: String,
    pub status: String,
    pub role: String,
    pub sort: String,
    pub roles: Vec<String>,
    pub users: Vec<AdminUserRow>,
    pub total: i64,
    pub page_no: i64,
    pub pages: i64,
    pub prev: Option<String>,
    pub next: Option<String>,
}

pub struct AdminSessionRow {
    pub sid: String,
    pub kind: &'static str,
    pub device: String,
    pub ip: String,
    pub created: String,
    pub last_seen: String,
}

/// A module's part of a user's admin page (the registry: authorized applications).
pub struct AdminSection {
    pub title: String,
    pub rows: Vec<AdminSectionRow>,
}

pub struct AdminSectionRow {
    pub text: String,
    pub detail: String,
    /// Where the row's button posts ("" for none), and its label.
    pub action: String,
    pub label: String,
}

pub struct AuditRow {
    pub at: String,
    pub action: String,
    pub outcome: String,
    pub actor: String,
    pub target: String,
    pub ip: String,
    pub details: String,
}

#[derive(Template)]
#[template(path = "admin_user.html")]
pub struct AdminUser {
    pub page: Page,
    pub nav: AdminNav,
    pub user: User,
    pub status: &'static str,
    pub status_class: &'static str,
    pub created: String,
    pub last_login: String,
    pub factors: String,
    /// Every role: name, held.
    pub roles: Vec<(String, bool)>,
    pub sessions: Vec<AdminSessionRow>,
    /// Provider, subject, linked on.
    pub identities: Vec<(String, String, String)>,
    pub sections: Vec<AdminSection>,
    pub events: Vec<AuditRow>,
}

#[derive(Template)]
#[template(path = "admin_roles.html")]
pub struct AdminRoles {
    pub page: Page,
    pub nav: AdminNav,
    pub roles: Vec<super::roles::Role>,
    pub form_name: String,
    pub form_scopes: String,
    pub form_description: String,
}

#[derive(Template)]
#[template(path = "admin_audit.html")]
pub struct AdminAudit {
    pub page: Page,
    pub nav: AdminNav,
    pub actor: String,
    pub action: String,
    pub since: String,
    /// The filter as a query string, for the export links.
    pub query: String,
    pub rows: Vec<AuditRow>,
}

pub struct OutboxRow {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub status: String,
    pub attempts: i64,
    pub created: String,
    pub last_error: String,
}

#[derive(Template)]
#[template(path = "admin_outbox.html")]
pub struct AdminOutbox {
    pub page: Page,
    pub nav: AdminNav,
    pub status: String,
    pub items: Vec<OutboxRow>,
}
