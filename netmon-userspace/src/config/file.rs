//! Reading and checking the configuration file: each key becomes the `run`
//! option of that name, checked by the option's own parser, with the line
//! it is on.

use std::{ffi::OsString, ops::Range, path::Path};

use clap::Command;
use toml::{
    de::{DeTable, DeValue},
    Spanned,
};

use super::ConfigError;
use crate::daemon::InterfaceSpec;

/// A checked configuration file: the `run` options it gives.
#[derive(Debug)]
pub struct ConfigFile {
    /// Option ids with their command-line words, in file order.
    options: Vec<(String, Vec<OsString>)>,
    /// Its `[[interface]]` tables.
    interfaces: Vec<InterfaceSpec>,
    /// Where its policy is: this file (inline), or the file it names.
    policy: Option<std::path::PathBuf>,
}

/// Keys that are no `run` option, or one the file must not hold.
fn refused(key: &str) -> Option<&'static str> {
    Some(match key {
        "iface" => "interfaces are listed as [[interface]] tables with name = \"IF\"",
        "config" => "a configuration file cannot name another; give --config on the command line",
        "reset_state" => {
            "reset_state would start from zero at every start; give --reset-state once on the \
             command line"
        }
        "help" | "version" => "not an option of the file",
        _ => return None,
    })
}

impl ConfigFile {
    /// Reads and checks `path` against the options of `run`.
    pub fn load(path: &Path, run: &Command) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Unreadable {
            path: path.to_path_buf(),
            cause,
        })?;
        ConfigFile::parse(path, &text, run)
    }

    /// Checks `text`, the file `path`, against the options of `run`.
    pub fn parse(path: &Path, text: &str, run: &Command) -> Result<ConfigFile, ConfigError> {
        let at = |span: Range<usize>, reason: String| ConfigError::AtLine {
            path: path.to_path_buf(),
            line: text[..span.start.min(text.len())].matches('\n').count() + 1,
            reason,
        };
        let table = DeTable::parse(text)
            .map_err(|e| at(e.span().unwrap_or(0..0), e.message().trim_end().to_string()))?;
        let mut specs = Vec::new();
        let mut policy = None;
        let mut options = Vec::new();
        for (key, value) in table.get_ref() {
            let (name, span) = (key.get_ref().as_ref(), key.span());
            match name {
                "interface" => {
                    specs = interfaces(value, &at)?;
                    options.push(("iface".into(), words_of(&specs)));
                }
                "policy" if value.get_ref().is_table() => {
                    // The policy inline: the daemon reads it from this file,
                    // and re-reads it on a change as it would a policy file.
                    crate::policy::file::parse(path, text, None)?;
                    options.push(("policy".into(), vec![word("policy", path.as_os_str())]));
                    policy = Some(path.to_path_buf());
                }
                _ => {
                    if let Some(why) = refused(name) {
                        return Err(at(span, format!("'{name}': {why}")));
                    }
                    let words = option(run, name, value)
                        .map_err(|why| at(value.span(), why.to_string()))?;
                    if name == "policy" {
                        policy = value.get_ref().as_str().map(Into::into);
                    }
                    options.push((name.to_string(), words));
                }
            }
        }
        Ok(ConfigFile {
            options,
            interfaces: specs,
            policy,
        })
    }

    /// Reads its policy as a daemon on its interfaces would: each `ifaces`
    /// entry must name one of them (when it lists any; interfaces given on
    /// the command line are checked at the start).
    pub fn check_policy(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.policy else {
            return Ok(());
        };
        let labels: Vec<String> = self.interfaces.iter().map(InterfaceSpec::label).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let known = (!labels.is_empty()).then_some(&labels[..]);
        crate::policy::file::load(path, known)?;
        Ok(())
    }

    /// The options it gives: ids with their command-line words.
    pub fn options(&self) -> &[(String, Vec<OsString>)] {
        &self.options
    }
}

fn word(long: &str, value: &std::ffi::OsStr) -> OsString {
    let mut word = OsString::from(format!("--{long}="));
    word.push(value);
    word
}

/// `[[interface]]` tables, each with a `name` and an optional `netns`.
fn interfaces(
    value: &Spanned<DeValue<'_>>,
    at: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Vec<InterfaceSpec>, ConfigError> {
    let Some(list) = value.get_ref().as_array() else {
        return Err(at(
            value.span(),
            "interface: write each as [[interface]] with name = \"IF\"".into(),
        ));
    };
    let mut specs = Vec::new();
    for entry in list {
        let Some(table) = entry.get_ref().as_table() else {
            return Err(at(
                entry.span(),
                "interface: write each as [[interface]] with name = \"IF\"".into(),
            ));
        };
        let (mut name, mut netns) = (None, None);
        for (key, value) in table {
            let field = key.get_ref().as_ref();
            let text = match field {
                "name" | "netns" => {
                    value
                        .get_ref()
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| {
                            at(
                                value.span(),
                                format!(
                            "interface {field}: write it as a string, like {field} = \"{}\"",
                            if field == "name" { "eth0" } else { "blue" }
                        ),
                            )
                        })?
                }
                other => {
                    return Err(at(
                        key.span(),
                        format!(
                            "interface: unknown key '{other}'; an interface has name and netns"
                        ),
                    ))
                }
            };
            match field {
                "name" => name = Some((text, value.span())),
                _ => netns = Some(text),
            }
        }
        let (name, name_at) = name.ok_or_else(|| {
            at(
                entry.span(),
                "[[interface]] without a name: add name = \"IF\"".into(),
            )
        })?;
        let spec = InterfaceSpec {
            name,
            netns,
            by_pattern: false,
        };
        spec.pattern().map_err(|e| at(name_at.clone(), e))?;
        spec.netns_pattern().map_err(|e| at(name_at, e))?;
        specs.push(spec);
    }
    Ok(specs)
}

/// The words `--iface IF` takes after `--netns NS` for `specs`: those of
/// the daemon's own namespace first, since a `--netns` holds for every
/// `--iface` after it.
fn words_of(specs: &[InterfaceSpec]) -> Vec<OsString> {
    let mut specs: Vec<&InterfaceSpec> = specs.iter().collect();
    specs.sort_by(|a, b| a.netns.cmp(&b.netns));
    let mut words = Vec::new();
    let mut current: Option<&str> = None;
    for spec in specs {
        if let Some(ns) = spec.netns.as_deref().filter(|ns| current != Some(*ns)) {
            words.push(word("netns", ns.as_ref()));
            current = Some(ns);
        }
        words.push(word("iface", spec.name.as_ref()));
    }
    words
}

/// The command-line words of option `name` set to `value`, checked by its parser.
fn option(
    run: &Command,
    name: &str,
    value: &Spanned<DeValue<'_>>,
) -> Result<Vec<OsString>, OptionProblem> {
    let Some(arg) = run.get_arguments().find(|a| a.get_id() == name) else {
        return Err(OptionProblem::Unknown {
            name: name.to_string(),
        });
    };
    let long = arg.get_long().unwrap_or(name);
    let takes_values = arg.get_action().takes_values();
    let scalar = |value: &DeValue<'_>| match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) => Ok(i.as_str().to_string()),
        other => Err(OptionProblem::NotAString {
            name: name.to_string(),
            toml_type: other.type_str(),
        }),
    };
    let words: Vec<OsString> = match value.get_ref() {
        DeValue::Boolean(on) if !takes_values => {
            if *on {
                vec![OsString::from(format!("--{long}"))]
            } else {
                vec![]
            }
        }
        _ if !takes_values => {
            return Err(OptionProblem::NotABoolean {
                name: name.to_string(),
            })
        }
        DeValue::Array(items) if matches!(arg.get_action(), clap::ArgAction::Append) => items
            .iter()
            .map(|item| scalar(item.get_ref()).map(|s| word(long, s.as_ref())))
            .collect::<Result<_, _>>()?,
        other => vec![word(long, scalar(other)?.as_ref())],
    };
    // The option alone, through the parser the command line uses.
    let alone = std::iter::once(OsString::from("run")).chain(words.iter().cloned());
    if let Err(e) = run.clone().try_get_matches_from(alone) {
        return Err(OptionProblem::Rejected {
            name: name.to_string(),
            why: super::first_line(&e),
        });
    }
    Ok(words)
}

/// Why a key of the file is not an option `run` takes, as its line's reason.
#[derive(Debug, thiserror::Error)]
enum OptionProblem {
    #[error("unknown option '{name}'{}", unknown_hint(name))]
    Unknown { name: String },
    #[error("{name}: write it as a string, not as a TOML {toml_type}")]
    NotAString {
        name: String,
        toml_type: &'static str,
    },
    #[error("{name}: write true or false")]
    NotABoolean { name: String },
    #[error("{name}: {why}")]
    Rejected { name: String, why: String },
}

fn unknown_hint(name: &str) -> String {
    if name.contains('-') {
        format!("; write it with '_': {}", name.replace('-', "_"))
    } else {
        "; the keys are the options of `netmon run --help`, with '_' for '-'".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_become_iface_words_each_after_its_netns() {
        let text = "[[interface]]\nname = \"eth1\"\nnetns = \"blue\"\n\n\
                    [[interface]]\nname = \"eth0\"\n\n\
                    [[interface]]\nname = \"veth0\"\nnetns = \"blue\"\n";
        let file = ConfigFile::parse(Path::new("netmon.toml"), text, &Command::new("run")).unwrap();
        let words = [
            "--iface=eth0",
            "--netns=blue",
            "--iface=eth1",
            "--iface=veth0",
        ]
        .map(OsString::from)
        .to_vec();
        assert_eq!(file.options(), [("iface".to_string(), words)]);
    }

    #[test]
    fn an_interface_pattern_that_does_not_parse_is_refused_at_its_line() {
        let text = "[[interface]]\nname = \"eth0\"\n\n[[interface]]\nname = \"veth[\"\n";
        let refused = ConfigFile::parse(Path::new("netmon.toml"), text, &Command::new("run"))
            .err()
            .unwrap();
        assert_eq!(
            refused.to_string(),
            "netmon.toml:5: interface pattern 'veth[': invalid range pattern at character 5; \
             write it as the shell does, like veth* or eth[0-3]"
        );
    }
}
