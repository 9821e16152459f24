//! blockjobinfo(1), rendered from the argument definitions themselves (`blockjobinfo generate-man`, hidden), so
//! the page never drifts from the tool: clap_mangen writes the title, name, synopsis and description; each
//! command, with its usage, text and options, the exit statuses and the environment follow from the same data.

use std::io::{self, Write};

use clap::{Arg, CommandFactory};
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

use crate::cli::{Cli, ENVIRONMENT, EXIT_STATUS};

/// The date on the page: the release's (bumped with the version).
const RELEASE_DATE: &str = "2026-11-26";

/// Writes the page, its source lines wrapped to 80 columns (`mandoc -T lint` clean).
pub fn render(out: &mut dyn Write) -> io::Result<()> {
    let mut page = Vec::new();
    render_unwrapped(&mut page)?;
    let page = String::from_utf8(page).expect("the page is UTF-8");
    for line in page.lines() {
        writeln!(out, "{}", wrap(line))?;
    }
    Ok(())
}

/// A long text line as several, broken at spaces where the next line would not start with a control character
/// ('.' or '\''); control lines stay whole.
fn wrap(line: &str) -> String {
    const WIDTH: usize = 80;
    if line.len() <= WIDTH || line.starts_with('.') || line.starts_with('\'') {
        return line.to_string();
    }
    let mut wrapped = String::new();
    let mut current = String::new();
    for word in line.split(' ') {
        let starts_control = word.starts_with('.') || word.starts_with('\'');
        if !current.is_empty() && current.len() + 1 + word.len() > WIDTH && !starts_control && !word.is_empty() {
            wrapped.push_str(&current);
            wrapped.push('\n');
            current.clear();
        } else if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    wrapped.push_str(&current);
    wrapped
}

fn render_unwrapped(out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let man = Man::new(cmd.clone())
        .title("BLOCKJOBINFO")
        .date(RELEASE_DATE)
        .source(format!("blockjobinfo {}", env!("CARGO_PKG_VERSION")))
        .manual("User Commands");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;

    let mut page = Roff::new();
    page.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page.control("SS", [format!("blockjobinfo {}", sub.get_name()).as_str()]);
        let usage = sub.clone().render_usage().to_string();
        let usage = usage.strip_prefix("Usage: ").unwrap_or(&usage);
        page.text([bold(usage)]);
        let about = sub.get_long_about().or(sub.get_about()).map(|a| a.to_string());
        for para in about.iter().flat_map(|a| a.split("\n\n")) {
            page.control("PP", []).text([roman(para.replace('\n', " "))]);
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            page.control("TP", []).text(arg_header(arg));
            let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string());
            page.text([roman(help.unwrap_or_default().replace('\n', " "))]);
        }
    }
    page.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_STATUS {
        page.control("TP", []).text([bold(code.to_string())]);
        page.text([roman(meaning)]);
    }
    page.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in ENVIRONMENT {
        page.control("TP", []).text([bold(name)]);
        page.text([roman(meaning)]);
    }
    page.control("SH", ["SEE ALSO"]);
    page.text([
        bold("libblockjobinfo"),
        roman("(3), "),
        bold("virsh"),
        roman("(1), "),
        bold("qemu-storage-daemon"),
        roman("(1)"),
    ]);
    out.write_all(page.render().as_bytes())
}

/// `-v, --verbose`, `--timeout SECONDS`, `DEVICE`: as `--help` shows an option.
fn arg_header(arg: &Arg) -> Vec<Inline> {
    let values: Vec<String> = arg
        .get_value_names()
        .map(|v| v.iter().map(|n| n.to_string()).collect())
        .unwrap_or_else(|| vec![arg.get_id().as_str().to_uppercase()]);
    if arg.is_positional() {
        return vec![italic(values.join(" "))];
    }
    let mut header = vec![];
    if let Some(short) = arg.get_short() {
        header.push(bold(format!("-{short}")));
    }
    if let Some(long) = arg.get_long() {
        if !header.is_empty() {
            header.push(roman(", "));
        }
        header.push(bold(format!("--{long}")));
    }
    if arg.get_action().takes_values() {
        header.push(roman(" "));
        header.push(italic(values.join(" ")));
    }
    header
}
