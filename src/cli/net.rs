//! `ferry net`: the userspace network for a network namespace.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_net::frontend::tap::{self, Tap, TapAddress, TapOptions};
use ferry_net::{NetConfig, NetMetrics, Stack};

const EXAMPLES: &str = "\
Examples:
  # a namespace with a tap configured like `slirp4netns --configure`
  unshare --net sleep infinity & ferry net --netns $! --configure
  # leave addressing to DHCP inside the namespace
  ferry net --netns /run/netns/box --tap eth0
  # then, inside the namespace: reach the host's 127.0.0.1:8080
  curl http://10.0.2.254:8080/

Address plan (defaults): subnet 10.0.2.0/24, gateway and DNS 10.0.2.1,
host alias 10.0.2.254 (the host's 127.0.0.1), first guest 10.0.2.2.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct NetArgs {
    /// Network namespace to serve: a PID or a path such as /proc/PID/ns/net or /run/netns/NAME.
    #[arg(long, value_name = "PATH|PID")]
    pub netns: String,
    /// User namespace to join first, for an unprivileged ferry (a PID or a path).
    #[arg(long, value_name = "PATH|PID")]
    pub userns: Option<String>,
    /// Name of the tap device to create in the namespace.
    #[arg(long, default_value = "tap0", value_name = "NAME")]
    pub tap: String,
    /// Configure the tap's address, MTU and default route (else use DHCP inside).
    #[arg(long)]
    pub configure: bool,
    /// MTU of the guest link (576-65520).
    #[arg(long, default_value_t = 65520)]
    pub mtu: u32,
    /// Subnet of the guest network.
    #[arg(long, default_value = "10.0.2.0/24", value_name = "CIDR")]
    pub subnet: String,
    /// Gateway (and DHCP and DNS server) address [default: first address of the subnet].
    #[arg(long, value_name = "IP")]
    pub gateway: Option<Ipv4Addr>,
    /// Address that reaches the host's 127.0.0.1 [default: last usable address of the subnet].
    #[arg(long, value_name = "IP")]
    pub host_alias: Option<Ipv4Addr>,
    /// Do not let guests reach the host's loopback through the host alias.
    #[arg(long)]
    pub no_host_loopback: bool,
    /// First guest address handed out by DHCP (and used by --configure) [default: gateway + 1].
    #[arg(long, value_name = "IP")]
    pub guest_ip: Option<Ipv4Addr>,
    /// Static DHCP lease (repeatable).
    #[arg(long = "dhcp-lease", value_name = "MAC=IP")]
    pub dhcp_leases: Vec<String>,
    /// DNS search domain sent by DHCP (repeatable) [default: test].
    #[arg(long = "search", value_name = "DOMAIN")]
    pub search: Vec<String>,
    /// Most TCP flows at once; new connections are refused beyond it.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub max_tcp_flows: usize,
    /// Most UDP flows at once; new flows are dropped beyond it.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_udp_flows: usize,
}

fn ns_path(arg: &str, kind: &str) -> PathBuf {
    if arg.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{arg}/ns/{kind}"))
    } else {
        PathBuf::from(arg)
    }
}

impl NetArgs {
    pub fn config(&self) -> anyhow::Result<NetConfig> {
        let mut cfg = NetConfig::for_subnet(&self.subnet)?;
        cfg.mtu = self.mtu;
        if let Some(g) = self.gateway {
            cfg.gateway = g;
            if self.guest_ip.is_none() {
                cfg.first_guest = Ipv4Addr::from(u32::from(g).wrapping_add(1));
            }
        }
        if let Some(h) = self.host_alias {
            cfg.host_alias = Some(h);
        }
        if self.no_host_loopback {
            cfg.host_alias = None;
        }
        if let Some(ip) = self.guest_ip {
            cfg.first_guest = ip;
        }
        for lease in &self.dhcp_leases {
            cfg.static_leases.push(NetConfig::parse_lease(lease)?);
        }
        if !self.search.is_empty() {
            cfg.search_domains = self.search.clone();
        }
        cfg.max_tcp_flows = self.max_tcp_flows;
        cfg.max_udp_flows = self.max_udp_flows;
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(args: NetArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    if let Some(userns) = &args.userns {
        tap::join_user_namespace(&ns_path(userns, "user"))?;
    }
    match ferry_net::sys::raise_nofile_limit(None) {
        Ok(n) if (n as usize) < cfg.max_tcp_flows + cfg.max_udp_flows => tracing::warn!(
            limit = n,
            "the open-file limit is below the flow limits; connections may fail with EMFILE (raise `ulimit -n`)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(args, cfg))
}

async fn serve(args: NetArgs, cfg: NetConfig) -> anyhow::Result<ExitCode> {
    let netns = ns_path(&args.netns, "net");
    let configure = args.configure.then_some(TapAddress {
        addr: cfg.first_guest,
        prefix: cfg.prefix,
        gateway: cfg.gateway,
        mtu: cfg.mtu,
    });
    let tap = Tap::open(&TapOptions {
        netns: Some(netns.clone()),
        name: args.tap.clone(),
        configure,
    })
    .with_context(|| format!("creating tap {} in {}", args.tap, netns.display()))?;
    let metrics = Arc::new(NetMetrics::default());
    let stack = Stack::new(cfg.clone(), metrics.clone());
    let port = tokio::task::spawn_local(ferry_net::run_port(stack.clone(), Rc::new(tap)));
    tokio::task::spawn_local(ferry_net::run_timers(stack.clone()));
    eprintln!(
        "ferry: network ready: {} in {}, gateway {}, host alias {}, guest {}, MTU {}",
        args.tap,
        netns.display(),
        cfg.gateway,
        cfg.host_alias.map_or("disabled".to_string(), |a| a.to_string()),
        cfg.first_guest,
        cfg.mtu
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = port => eprintln!("ferry: {} went away (namespace gone?); exiting", args.tap),
    }
    tracing::info!(counters = %metrics.render().replace('\n', " "), "network stopped");
    // Give queued frames a moment; nothing else to flush.
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(ExitCode::SUCCESS)
}
