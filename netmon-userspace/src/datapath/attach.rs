//! Attaching the loaded programs to an interface, or into the links an
//! earlier run pinned, and pinning the links.

use std::{collections::BTreeSet, path::Path};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};

use super::{
    load::{load_programs, program, EGRESS_PROGRAM, INGRESS_PROGRAM, INGRESS_TC_PROGRAM},
    pins::{Hook, PinDir},
    DatapathError,
};

/// Where to count and enforce received traffic (`--ingress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressHook {
    /// Native XDP on a hardware NIC whose driver runs it; TC ingress on virtual
    /// devices (veth, bridges, bonds, tunnels) and where native XDP fails.
    Auto,
    /// Native (driver) XDP only: drops before the kernel allocates an skb.
    #[value(alias = "native")]
    Xdp,
    /// Generic (skb) XDP: works everywhere, but linearizes GRO packets.
    #[value(name = "xdp-skb", alias = "skb")]
    XdpSkb,
    /// TC ingress classifier: after GRO, so a TCP stream costs one run per
    /// coalesced packet; on veth it keeps the peer's TSO/GSO on.
    Tc,
}

/// The ingress hook in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// XDP, in this mode.
    Xdp(XdpMode),
    /// The TC ingress classifier.
    Tc,
}

impl std::fmt::Display for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ingress::Xdp(XdpMode::Driver) => f.write_str("native XDP"),
            Ingress::Xdp(XdpMode::Skb) => f.write_str("skb-mode XDP"),
            Ingress::Xdp(mode) => write!(f, "XDP ({mode:?})"),
            Ingress::Tc => f.write_str("TC ingress"),
        }
    }
}

/// Attaches the ingress program (see [`attach_ingress`]) and the egress
/// one; returns the ingress hook netmon picked (`None` when adopted) and the
/// links, pinned.
pub(super) fn attach_programs(
    ebpf: &mut Ebpf,
    iface: &str,
    hook: IngressHook,
    pins: &PinDir,
) -> Result<(Option<Ingress>, Vec<PinnedLink>), DatapathError> {
    let mut links = Vec::new();
    let ingress = attach_ingress(ebpf, iface, hook, pins, &mut links)?;
    attach_tc(ebpf, iface, TcAttachType::Egress, pins, &mut links)?;
    Ok((ingress, links))
}

/// Unpins the links pinned for an earlier interface of `iface`'s name
/// (deleted, or renamed), so that the programs are attached to this one,
/// interface index `ifindex`, instead.
pub(super) fn unpin_stale_links(
    pins: &PinDir,
    iface: &str,
    ifindex: u32,
) -> Result<(), DatapathError> {
    let stale = pins.stale_links(ifindex);
    if stale.is_empty() {
        return Ok(());
    }
    let was = stale
        .iter()
        .map(|(_, index)| match index {
            0 => "gone".to_string(),
            n => format!("ifindex {n}"),
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(", ");
    log::warn!(
        "the programs pinned in {} were attached to an earlier {iface} ({was}); its \
         counters and quota usage carry on, and the programs are attached to this \
         {iface} (ifindex {ifindex}) instead",
        pins.path().display()
    );
    for hook in [Hook::Ingress, Hook::TcIngress, Hook::Egress] {
        if pins.link(hook).exists() {
            pins.remove_link(hook)?;
        }
    }
    Ok(())
}

fn attach_error(
    hook: &'static str,
    iface: &str,
) -> impl Fn(aya::programs::ProgramError) -> DatapathError {
    let iface = iface.to_string();
    move |cause| DatapathError::Attach {
        hook,
        iface: iface.clone(),
        cause,
    }
}

/// Pins a link (so that it outlives us) and keeps its descriptor.
fn pin_link(
    link: Result<FdLink, impl std::fmt::Display>,
    path: std::path::PathBuf,
    links: &mut Vec<PinnedLink>,
    hook: &str,
) {
    match link {
        Ok(fd_link) => match fd_link.pin(&path) {
            Ok(pinned) => links.push(pinned),
            Err(e) => log::warn!(
                "cannot pin the {hook} link at {} ({e}); a crash will detach it",
                path.display()
            ),
        },
        Err(e) => {
            log::warn!("the {hook} attachment cannot be pinned ({e}); a crash will detach it")
        }
    }
}

/// The programs [`attach_programs`] attaches to `iface` (index `ifindex`)
/// first: the ingress one of the links an earlier run pinned for it, else
/// the one `hook` picks; and the egress one. Links pinned for an earlier
/// interface of the name are not this one's ([`unpin_stale_links`]).
pub(super) fn programs_for(
    iface: &str,
    ifindex: u32,
    hook: IngressHook,
    pins: &PinDir,
) -> [&'static str; 2] {
    let ours = pins.stale_links(ifindex).is_empty();
    let ingress = if ours && pins.link(Hook::TcIngress).exists() {
        INGRESS_TC_PROGRAM
    } else if ours && pins.link(Hook::Ingress).exists() {
        INGRESS_PROGRAM
    } else {
        match xdp_mode(iface, hook) {
            Some(_) => INGRESS_PROGRAM,
            None => INGRESS_TC_PROGRAM,
        }
    };
    [ingress, EGRESS_PROGRAM]
}

/// Attaches the ingress program: into the link an earlier run pinned (XDP or
/// TC, whichever it was), else at the hook `hook` picks. `None` when adopted.
fn attach_ingress(
    ebpf: &mut Ebpf,
    iface: &str,
    hook: IngressHook,
    pins: &PinDir,
    links: &mut Vec<PinnedLink>,
) -> Result<Option<Ingress>, DatapathError> {
    if pins.link(Hook::TcIngress).exists() {
        attach_tc(ebpf, iface, TcAttachType::Ingress, pins, links)?;
        return Ok(None);
    }
    let adopting = pins.link(Hook::Ingress).exists();
    match xdp_mode(iface, hook) {
        Some(mode) => match attach_xdp(ebpf, iface, mode, pins, links) {
            Ok(used) => Ok(used.map(Ingress::Xdp)),
            Err(e) if hook == IngressHook::Auto && !adopting => {
                log::warn!("native XDP unavailable on {iface} ({e}); counting received traffic at TC ingress instead");
                attach_tc(ebpf, iface, TcAttachType::Ingress, pins, links)?;
                Ok(Some(Ingress::Tc))
            }
            Err(e) => Err(e),
        },
        // An XDP link left by an earlier run is adopted whatever was asked.
        None if adopting => attach_xdp(ebpf, iface, XdpMode::Skb, pins, links).map(|_| None),
        None => {
            attach_tc(ebpf, iface, TcAttachType::Ingress, pins, links)?;
            Ok(Some(Ingress::Tc))
        }
    }
}

/// The XDP mode `hook` picks for `iface`; `None` for TC ingress.
fn xdp_mode(iface: &str, hook: IngressHook) -> Option<XdpMode> {
    match hook {
        IngressHook::Tc => None,
        IngressHook::Xdp => Some(XdpMode::Driver),
        IngressHook::XdpSkb => Some(XdpMode::Skb),
        IngressHook::Auto if is_virtual(iface) => None,
        IngressHook::Auto => Some(XdpMode::Driver),
    }
}

/// True for devices without a bus device behind them (veth, bridge, bond,
/// tunnels, loopback): native XDP there only adds work, or, on veth, turns
/// off the peer's TSO/GSO.
fn is_virtual(iface: &str) -> bool {
    !Path::new("/sys/class/net")
        .join(iface)
        .join("device")
        .exists()
}

/// Attaches XDP in `mode`, or swaps our program into a pinned XDP link. `None` when adopted.
fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpMode,
    pins: &PinDir,
    links: &mut Vec<PinnedLink>,
) -> Result<Option<XdpMode>, DatapathError> {
    load_programs(ebpf, &[INGRESS_PROGRAM])?;
    let xdp = program::<Xdp>(ebpf, INGRESS_PROGRAM)?;
    let path = pins.link(Hook::Ingress);
    if let Ok(pinned) = PinnedLink::from_pin(&path) {
        // Swap our program into the running link: no frame goes uncounted.
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(adopt_error(&path))?;
        let id = xdp
            .attach_to_link(link)
            .map_err(attach_error("XDP", iface))?;
        // Held by the pin and ours alone: dropped with ours, it detaches.
        drop(xdp.take_link(id).map_err(attach_error("XDP", iface))?);
        links.push(PinnedLink::from_pin(&path).map_err(adopt_error(&path))?);
        return Ok(None);
    }
    let id = xdp
        .attach(iface, mode)
        .map_err(attach_error("XDP", iface))?;
    let link = xdp.take_link(id).map_err(attach_error("XDP", iface))?;
    pin_link(FdLink::try_from(link), path, links, "XDP");
    Ok(Some(mode))
}

/// Attaches a TC program (egress, or ingress for `--ingress tc`), or swaps
/// ours into the link an earlier run pinned.
fn attach_tc(
    ebpf: &mut Ebpf,
    iface: &str,
    direction: TcAttachType,
    pins: &PinDir,
    links: &mut Vec<PinnedLink>,
) -> Result<(), DatapathError> {
    let (name, hook, what) = match direction {
        TcAttachType::Ingress => (INGRESS_TC_PROGRAM, Hook::TcIngress, "TC ingress"),
        _ => (EGRESS_PROGRAM, Hook::Egress, "TC egress"),
    };
    // Loaded here when native XDP failed and TC ingress stands in.
    load_programs(ebpf, &[name])?;
    let tc = program::<SchedClassifier>(ebpf, name)?;
    let path = pins.link(hook);
    if let Ok(pinned) = PinnedLink::from_pin(&path) {
        let link =
            SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(adopt_error(&path))?;
        let id = tc.attach_to_link(link).map_err(attach_error(what, iface))?;
        // Held by the pin and ours alone: dropped with ours, it detaches.
        drop(tc.take_link(id).map_err(attach_error(what, iface))?);
        links.push(PinnedLink::from_pin(&path).map_err(adopt_error(&path))?);
        return Ok(());
    }
    // tcx on kernels >= 6.6 (aya picks it), a clsact qdisc otherwise.
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if !tcx {
        if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
            log::debug!("clsact qdisc on {iface}: {e} (already present?)");
        }
    }
    let id = tc
        .attach(iface, direction)
        .map_err(attach_error(what, iface))?;
    let link = tc.take_link(id).map_err(attach_error(what, iface))?;
    pin_link(FdLink::try_from(link), path, links, what);
    Ok(())
}

/// The kernel's index of `iface`, if it exists.
pub fn interface_index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The names of the calling thread's namespace's interfaces.
pub fn interface_names() -> Result<Vec<String>, DatapathError> {
    let interfaces = nix::net::if_::if_nameindex().map_err(|errno| DatapathError::Syscall {
        call: "listing the interfaces",
        cause: errno.into(),
    })?;
    Ok(interfaces
        .iter()
        .map(|i| i.name().to_string_lossy().into_owned())
        .collect())
}

/// Why a pinned link could not be taken over.
fn adopt_error<E: std::error::Error + Send + Sync + 'static>(
    path: &Path,
) -> impl FnOnce(E) -> DatapathError + '_ {
    |cause| DatapathError::Adopt {
        path: path.to_path_buf(),
        cause: Box::new(cause),
    }
}
