//! Random numbers from the kernel, for names and ids nobody may predict.

/// 64 random bits from getrandom(2).
pub fn u64() -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    loop {
        // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if got == bytes.len() as isize {
            return Ok(u64::from_ne_bytes(bytes));
        }
        let error = std::io::Error::last_os_error();
        if got < 0 && error.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(if got < 0 {
            error
        } else {
            // Never for 8 bytes; refused rather than using a guessable name.
            std::io::Error::other(format!("getrandom gave {got} of 8 bytes"))
        });
    }
}
