//! Entry points for the fuzz targets in `netmon-userspace/fuzz` (cargo-fuzz),
//! also run over random input by the unit tests so CI exercises them.
//!
//! Each parser must return a value or an error for any input, never panic.

use std::path::Path;

/// The policy file parser.
pub fn policy_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::policy::file::parse(Path::new("fuzz.toml"), text, None);
    }
}

/// Sizes, durations, CIDRs, protocols and periods as the CLI parses them.
pub fn units(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::units::parse_size(text);
        let _ = crate::units::parse_interval(text);
        let _ = text.parse::<crate::policy::Cidr>();
        let _ = text.parse::<crate::policy::Proto>();
        let _ = crate::policy::Period::try_from(text.to_string());
    }
}

/// The log and state file readers.
pub fn log_files(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::logs::network_log::parse(Path::new("fuzz.json"), text);
        let _ = crate::logs::state::parse(Path::new("fuzz.state.json"), text);
    }
}

#[cfg(test)]
mod tests {
    /// Random and mutated inputs through every entry point: none may panic.
    #[test]
    fn parsers_survive_random_input() {
        let seeds: [&[u8]; 6] = [
            b"[[block]]\ncidr = \"10.0.0.0/8\"\nproto = \"udp\"\ndport = 443\n",
            b"[[quota]]\ncidr = \"172.217.0.0/16\"\nlimit = \"2GB\"\nperiod = \"monthly\"\nstart_day = 31\nwarn = [80]\n",
            b"1.5GiB",
            b"fd00:200::/64",
            b"{\"('10.0.0.1', '10.0.0.2')\": 1.5, \"total_k_bytes\": 1.5}",
            b"monthly:15",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..100_000 {
            let mut input = seeds[rng.usize(..seeds.len())].to_vec();
            for _ in 0..rng.usize(0..6) {
                match rng.u8(0..3) {
                    0 if !input.is_empty() => {
                        let i = rng.usize(..input.len());
                        input[i] = rng.u8(..);
                    }
                    1 => input.insert(rng.usize(..=input.len()), rng.u8(32..127)),
                    _ if !input.is_empty() => {
                        input.truncate(rng.usize(..input.len()));
                    }
                    _ => {}
                }
            }
            super::policy_file(&input);
            super::units(&input);
            super::log_files(&input);
        }
    }
}
