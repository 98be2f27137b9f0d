//! The kernel side as user space sees it: load netmon's eBPF object, attach it to
//! an interface, read its maps. Every aya call netmon makes lives under this module.

pub mod enforce;
mod error;
pub mod readout;

use aya::{
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use netmon_common::maps::{DEFAULT_MAX_PAIRS, PAIRS_MAP};

pub use error::DatapathError;
pub use readout::{PairReading, Snapshot};

/// The compiled eBPF object, embedded so that the `netmon` binary is self-contained.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETMON_EBPF_OBJECT"));

/// Name of the XDP (ingress) program in the object.
pub const INGRESS_PROGRAM: &str = "netmon_ingress";
/// Name of the TC (egress) program in the object.
pub const EGRESS_PROGRAM: &str = "netmon_egress";

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to skb mode when the driver lacks it.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic skb mode: works on every interface, costs more per packet.
    Skb,
}

/// Settings fixed when the object is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Capacity of the pair table.
    pub max_pairs: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_pairs: DEFAULT_MAX_PAIRS,
        }
    }
}

/// Loads the object and both programs into the kernel (verified, not attached).
pub fn load(options: &LoadOptions) -> Result<Ebpf, DatapathError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(PAIRS_MAP, options.max_pairs)
        .load(EBPF_OBJECT)
        .map_err(DatapathError::from_load)?;
    program::<Xdp>(&mut ebpf, INGRESS_PROGRAM)?
        .load()
        .map_err(|e| DatapathError::program(INGRESS_PROGRAM, e))?;
    program::<SchedClassifier>(&mut ebpf, EGRESS_PROGRAM)?
        .load()
        .map_err(|e| DatapathError::program(EGRESS_PROGRAM, e))?;
    Ok(ebpf)
}

/// Looks up a program of the object by name and type.
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::MissingProgram(name.to_string()))?;
    program
        .try_into()
        .map_err(|e| DatapathError::program(name, e))
}

/// netmon's programs, attached to one interface. Dropping it detaches them.
pub struct Datapath {
    ebpf: Ebpf,
    iface: String,
    xdp_mode: XdpMode,
    max_pairs: u32,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Datapath {
    /// Loads the programs and attaches XDP (ingress) and TC (egress) to `iface`.
    pub fn attach(
        iface: &str,
        options: &LoadOptions,
        mode: XdpAttachMode,
    ) -> Result<Self, DatapathError> {
        if interface_index(iface).is_none() {
            return Err(DatapathError::NoInterface(iface.to_string()));
        }
        let mut ebpf = load(options)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("eBPF log channel unavailable: {e}");
                None
            }
        };
        let xdp_mode = attach_xdp(&mut ebpf, iface, mode)?;
        // tcx on kernels >= 6.6 (aya picks it), a clsact qdisc otherwise.
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        if !tcx {
            if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
                log::debug!("clsact qdisc on {iface}: {e} (already present?)");
            }
        }
        program::<SchedClassifier>(&mut ebpf, EGRESS_PROGRAM)?
            .attach(iface, TcAttachType::Egress)
            .map_err(|source| DatapathError::Attach {
                hook: "TC egress",
                iface: iface.to_string(),
                source,
            })?;
        Ok(Self {
            ebpf,
            iface: iface.to_string(),
            xdp_mode,
            max_pairs: options.max_pairs,
            logger,
        })
    }

    /// The interface the programs are attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The XDP mode actually in use.
    pub fn xdp_mode(&self) -> XdpMode {
        self.xdp_mode
    }

    /// The loaded object, for policy updates and counters.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object, mutably.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Reads the maps' cumulative counters.
    pub fn read(&mut self) -> Result<Snapshot, DatapathError> {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        readout::read(&self.ebpf, self.max_pairs)
    }
}

fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: XdpAttachMode) -> Result<XdpMode, DatapathError> {
    let xdp = program::<Xdp>(ebpf, INGRESS_PROGRAM)?;
    let attach_error = |source| DatapathError::Attach {
        hook: "XDP",
        iface: iface.to_string(),
        source,
    };
    match mode {
        XdpAttachMode::Native => xdp
            .attach(iface, XdpMode::Driver)
            .map(|_| XdpMode::Driver)
            .map_err(attach_error),
        XdpAttachMode::Skb => xdp
            .attach(iface, XdpMode::Skb)
            .map(|_| XdpMode::Skb)
            .map_err(attach_error),
        XdpAttachMode::Auto => match xdp.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok(XdpMode::Driver),
            Err(native) => {
                log::warn!(
                    "native XDP unavailable on {iface} ({native}); using skb mode, which costs more per packet"
                );
                xdp.attach(iface, XdpMode::Skb)
                    .map(|_| XdpMode::Skb)
                    .map_err(attach_error)
            }
        },
    }
}

/// The kernel's index of `iface`, if it exists.
pub fn interface_index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
