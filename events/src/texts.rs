//! The exact pt-BR texts terminals and operators see.
//!
//! These are product text, not translations: terminals in the field and support staff expect
//! them byte for byte as the vendor's manual shows them (`shared/seeds/000_512d834ec851b862.txt`),
//! including its quirks ("não efetivado", no space before "(CONTINGÊNCIA MANUAL)", the missing
//! final period of "Assinatura do token inválida"). Accented letters are precomposed (NFC).
//! Dates are shown `dd/mm/yyyy`. [`NO_LICENSE`] is the one text the manual lacks; it is a
//! design choice and says so.

use chrono::NaiveDate;

/// Check-in refused because the customer is inactive (HTTP 401).
pub const CUSTOMER_INACTIVE: &str = "Usuário inválido.";

/// Check-in refused because the credential is bad or forged (HTTP 401); also what the
/// upstream platform answers for a bad server token.
pub const TOKEN_INVALID: &str = "Assinatura do token inválida";

/// License blocked, deactivated or expired: sales are blocked.
pub const NOT_RELEASED: &str =
    "Liberação do sistema não efetivado! Por favor, entre em contato com o suporte técnico...";

/// Type 01 contingency: the customer's server cannot reach the central platform.
pub const CONTINGENCY_UPSTREAM: &str = "Sistema de licenciamento em modo de contingência do IntelliWeb! Por favor, confira a conexão no servidor do IntelliWeb.";

/// The customer's server failed to refresh licenses from the platform; it retries hourly.
pub const REFRESH_FAILED: &str =
    "Falha ao atualizar as licenças! O sistema irá retentar em 1 hora.";

/// (design) No license of the product for this terminal and none free to bind. The manual has
/// no text for this case; this one follows the tone of [`NOT_RELEASED`].
pub const NO_LICENSE: &str = "Nenhuma licença disponível para este terminal. Por favor, entre em contato com o suporte técnico...";

/// Emergency release accepted by the terminal; followed by [`licensed_to`].
pub const EMERGENCY_OK: &str = "Chave validada com sucesso!";

/// First line of the AVISO a terminal shows when the server answers 401 ("Cliente
/// Inativado", "Token inválido"); see [`refused_401`].
pub const PROBLEM_FOUND: &str = "Problema encontrado na liberação!";

/// Second line of that AVISO.
pub const SERVER_REPLY: &str = "Retorno do servidor:";

/// The AVISO of a 401 answer, line by line, as the manual shows it:
/// `Problema encontrado na liberação!`, `Retorno do servidor:`, `CÓDIGO: 401`,
/// `MENSAGEM: Usuário inválido.` (`message` is [`CUSTOMER_INACTIVE`] or [`TOKEN_INVALID`]).
pub fn refused_401(message: &str) -> Vec<String> {
    vec![
        PROBLEM_FOUND.to_owned(),
        SERVER_REPLY.to_owned(),
        "CÓDIGO: 401".to_owned(),
        format!("MENSAGEM: {message}"),
    ]
}

/// The line a terminal logs with each answer, naming the server's version (manual, "licença
/// expirada" and "Contingência": `EasyCash utilizando a versão 2.0.12.1 do servidor...`).
pub fn server_version_line(program: &str, version: &str) -> String {
    format!("{program} utilizando a versão {version} do servidor...")
}

// ---- The operator log (`iwb.log`), as the manual's IntelliWeb Server screen shows it ----

/// A refresh asked the center for the licenses.
pub const LOG_REQUEST_SENT: &str = "Requisição enviada para a API..";
/// A refresh ended, after its [`log_license`] lines.
pub const LOG_PROCESS_FINISHED: &str = "Processo finalizado...";
/// The relay waits for the next refresh or request.
pub const LOG_WAITING: &str = "Aguardando novas requisições...";
/// What the log shows for a field the center did not give.
pub const NOT_INFORMED: &str = "(Não Informado)";

/// One license received by a refresh: `<- LICENÇA: 000035 <name> SERIAL: <hardware key> |
/// IP: <ip> | SIGNATURE: <64 hex>`, with [`NOT_INFORMED`] for a missing serial or IP.
pub fn log_license(
    license: &str,
    name: &str,
    serial: Option<&str>,
    ip: Option<std::net::IpAddr>,
    signature: &str,
) -> String {
    let ip = ip.map_or_else(|| NOT_INFORMED.to_owned(), |ip| ip.to_string());
    format!(
        "<- LICENÇA: {license} {name} SERIAL: {} | IP: {ip} | SIGNATURE: {signature}",
        serial.unwrap_or(NOT_INFORMED)
    )
}

/// The center refused a refresh because the customer is inactive or unknown:
/// `ERRO(#01): [401] - Usuário inválido.`
pub fn log_refused_user(message: &str) -> String {
    format!("ERRO(#01): [401] - {message}")
}

/// The center refused a refresh's credentials:
/// `[UPDATEALLLICENCES]ERRO(#01): [401]Assinatura do token inválida`.
pub fn log_refused_update(message: &str) -> String {
    format!("[UPDATEALLLICENCES]ERRO(#01): [401]{message}")
}

/// A date as the manual shows it: `dd/mm/yyyy` (`26/03/2023`).
pub fn format_date(d: NaiveDate) -> String {
    // Not `format("%d/%m/%Y")`: parsing the pattern on every call shows up on the check-in
    // hot path.
    use chrono::Datelike;
    format!("{:02}/{:02}/{:04}", d.day(), d.month(), d.year())
}

/// A valid license: `Licença do sistema expira no dia: 26/03/2023`.
pub fn expires_on(date: NaiveDate) -> String {
    format!("Licença do sistema expira no dia: {}", format_date(date))
}

/// The warning shown when 3 days or fewer are left: `Faltam [01] dias para expirar a licença!`.
///
/// `days` is shown with at least two digits; the rule only shows it for 0 to 3 days, and the
/// text is always plural ("dias"), as in the manual.
pub fn days_left_warning(days: i64) -> String {
    format!("Faltam [{days:02}] dias para expirar a licença!")
}

/// The date line under a warning: `DATA DA LICENÇA: 30/03/2023`.
pub fn license_date(date: NaiveDate) -> String {
    format!("DATA DA LICENÇA: {}", format_date(date))
}

/// Type 02 (manual) contingency, naming the server the terminal cannot reach:
/// `...com o servidor do IntelliWeb(192.168.0.198:8023).`
///
/// `host_port` is inserted as given (`192.168.0.198:8023`).
pub fn contingency_manual(host_port: &str) -> String {
    format!(
        "Sistema de licenciamento em modo de contingência manual! Por favor, confira a conexão com o servidor do IntelliWeb({host_port})."
    )
}

/// Expiry under type 01 contingency:
/// `Licença do sistema expira no dia: 04/04/2023(CONTINGÊNCIA DO INTELLIWEB)`.
pub fn expires_on_contingency_upstream(date: NaiveDate) -> String {
    format!("{}(CONTINGÊNCIA DO INTELLIWEB)", expires_on(date))
}

/// Expiry under type 02 contingency:
/// `Licença do sistema expira no dia: 29/03/2023(CONTINGÊNCIA MANUAL)`.
pub fn expires_on_contingency_manual(date: NaiveDate) -> String {
    format!("{}(CONTINGÊNCIA MANUAL)", expires_on(date))
}

/// The line after [`EMERGENCY_OK`]: `Licenciado para: QUALIDADE`.
pub fn licensed_to(name: &str) -> String {
    format!("Licenciado para: {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    // Each expected literal below is copied from the manual (seed 000).

    #[test]
    fn refusal_texts_match_the_manual() {
        assert_eq!(CUSTOMER_INACTIVE, "Usuário inválido.");
        assert_eq!(TOKEN_INVALID, "Assinatura do token inválida");
        assert_eq!(
            NOT_RELEASED,
            "Liberação do sistema não efetivado! Por favor, entre em contato com o suporte técnico..."
        );
    }

    #[test]
    fn the_401_aviso_matches_the_manual_line_by_line() {
        // "Cliente Inativado ou com licença expirada" and "Token inválido".
        assert_eq!(
            refused_401(CUSTOMER_INACTIVE),
            [
                "Problema encontrado na liberação!",
                "Retorno do servidor:",
                "CÓDIGO: 401",
                "MENSAGEM: Usuário inválido."
            ]
        );
        assert_eq!(
            refused_401(TOKEN_INVALID)[3],
            "MENSAGEM: Assinatura do token inválida"
        );
    }

    #[test]
    fn the_operator_log_lines_match_the_manual() {
        assert_eq!(
            log_license(
                "000035",
                "PADARIA",
                Some("1239D389A61D176625C26C3E48809BE7"),
                "192.168.0.225".parse().ok(),
                "56418588CE322F045564F365208C35D88DF6E87686CE20D75E75F8E501DED8EB"
            ),
            "<- LICENÇA: 000035 PADARIA SERIAL: 1239D389A61D176625C26C3E48809BE7 | IP: 192.168.0.225 | SIGNATURE: 56418588CE322F045564F365208C35D88DF6E87686CE20D75E75F8E501DED8EB"
        );
        assert_eq!(
            log_license("000970", "X", None, None, "AB"),
            "<- LICENÇA: 000970 X SERIAL: (Não Informado) | IP: (Não Informado) | SIGNATURE: AB"
        );
        assert_eq!(
            log_refused_user(CUSTOMER_INACTIVE),
            "ERRO(#01): [401] - Usuário inválido."
        );
        assert_eq!(
            log_refused_update(TOKEN_INVALID),
            "[UPDATEALLLICENCES]ERRO(#01): [401]Assinatura do token inválida"
        );
        assert_eq!(LOG_REQUEST_SENT, "Requisição enviada para a API..");
        assert_eq!(LOG_PROCESS_FINISHED, "Processo finalizado...");
        assert_eq!(LOG_WAITING, "Aguardando novas requisições...");
    }

    #[test]
    fn the_server_version_line_matches_the_manual() {
        assert_eq!(
            server_version_line("EasyCash", "2.0.12.1"),
            "EasyCash utilizando a versão 2.0.12.1 do servidor..."
        );
    }

    #[test]
    fn accented_letters_are_precomposed() {
        // "á" is U+00E1 (C3 A1), not "a" followed by a combining accent.
        assert_eq!(
            CUSTOMER_INACTIVE.as_bytes(),
            b"Usu\xC3\xA1rio inv\xC3\xA1lido."
        );
        let all = [
            CUSTOMER_INACTIVE.to_owned(),
            TOKEN_INVALID.to_owned(),
            NOT_RELEASED.to_owned(),
            CONTINGENCY_UPSTREAM.to_owned(),
            REFRESH_FAILED.to_owned(),
            NO_LICENSE.to_owned(),
            EMERGENCY_OK.to_owned(),
            expires_on_contingency_manual(day(2023, 3, 29)),
            expires_on_contingency_upstream(day(2023, 4, 4)),
            contingency_manual("192.168.0.198:8023"),
            days_left_warning(1),
            license_date(day(2023, 3, 30)),
        ];
        let all = all
            .into_iter()
            .chain(refused_401(CUSTOMER_INACTIVE))
            .chain([server_version_line("EasyCash", "1.0")]);
        for text in all {
            assert!(
                !text.chars().any(|c| ('\u{300}'..='\u{36F}').contains(&c)),
                "{text:?} has a combining mark"
            );
        }
    }

    #[test]
    fn dates_are_shown_day_month_year() {
        assert_eq!(format_date(day(2023, 3, 26)), "26/03/2023");
        assert_eq!(format_date(day(2023, 10, 5)), "05/10/2023");
    }

    #[test]
    fn valid_license_text_matches_the_manual() {
        assert_eq!(
            expires_on(day(2023, 3, 26)),
            "Licença do sistema expira no dia: 26/03/2023"
        );
    }

    #[test]
    fn expiry_warning_matches_the_manual() {
        assert_eq!(
            days_left_warning(1),
            "Faltam [01] dias para expirar a licença!"
        );
        assert_eq!(
            days_left_warning(3),
            "Faltam [03] dias para expirar a licença!"
        );
        assert_eq!(
            days_left_warning(0),
            "Faltam [00] dias para expirar a licença!"
        );
        assert_eq!(
            license_date(day(2023, 3, 30)),
            "DATA DA LICENÇA: 30/03/2023"
        );
    }

    #[test]
    fn contingency_texts_match_the_manual() {
        assert_eq!(
            CONTINGENCY_UPSTREAM,
            "Sistema de licenciamento em modo de contingência do IntelliWeb! Por favor, confira a conexão no servidor do IntelliWeb."
        );
        assert_eq!(
            expires_on_contingency_upstream(day(2023, 4, 4)),
            "Licença do sistema expira no dia: 04/04/2023(CONTINGÊNCIA DO INTELLIWEB)"
        );
        assert_eq!(
            contingency_manual("192.168.0.198:8023"),
            "Sistema de licenciamento em modo de contingência manual! Por favor, confira a conexão com o servidor do IntelliWeb(192.168.0.198:8023)."
        );
        assert_eq!(
            expires_on_contingency_manual(day(2023, 3, 29)),
            "Licença do sistema expira no dia: 29/03/2023(CONTINGÊNCIA MANUAL)"
        );
        assert_eq!(
            REFRESH_FAILED,
            "Falha ao atualizar as licenças! O sistema irá retentar em 1 hora."
        );
    }

    #[test]
    fn emergency_release_texts_match_the_manual() {
        assert_eq!(EMERGENCY_OK, "Chave validada com sucesso!");
        assert_eq!(licensed_to("QUALIDADE"), "Licenciado para: QUALIDADE");
    }

    #[test]
    fn the_design_text_for_no_license_is_pinned() {
        assert_eq!(
            NO_LICENSE,
            "Nenhuma licença disponível para este terminal. Por favor, entre em contato com o suporte técnico..."
        );
    }
}
