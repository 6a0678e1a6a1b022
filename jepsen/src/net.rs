//! The test network: one network namespace per server and one for the harness's clients, joined
//! by a bridge that lives in a namespace of its own. Nothing is added to the host's namespace, so
//! all traffic stays inside what this module creates, and deleting the namespaces removes it all.
//! Faults on the network (partitions, loss) are nftables rules inside the servers' namespaces.

use std::collections::BTreeSet;
use std::process::Command;

use crate::HarnessError;

/// The subnet inside the test network; it exists only in these namespaces.
const SUBNET: &str = "10.77.0";
/// The clients' address on the bridge.
const CLIENT_HOST: u8 = 200;
/// The nftables table the nemeses own in every server namespace.
const NFT_TABLE: &str = "jepsen";

/// Run a command; its failure is a harness failure naming the command and what it printed.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| HarnessError::Command(format!("{cmd} {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(HarnessError::Command(format!(
            "{cmd} {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, HarnessError> {
    run("ip", args)
}

pub struct Net {
    pub prefix: String,
    pub nodes: Vec<u64>,
    /// Agents (the scheduling workload's worker nodes), numbered from 1.
    pub agents: Vec<u64>,
    created: Vec<String>,
}

/// Agents' addresses start here (agent 1 is `10.77.0.101`).
const AGENT_HOST_BASE: u8 = 100;

impl Net {
    /// Namespace holding server `id`.
    pub fn node_ns(&self, id: u64) -> String {
        format!("{}-n{id}", self.prefix)
    }

    pub fn client_ns(&self) -> String {
        format!("{}-c", self.prefix)
    }

    /// Namespace holding agent `k`.
    pub fn agent_ns(&self, k: u64) -> String {
        format!("{}-a{k}", self.prefix)
    }

    pub fn agent_ip(k: u64) -> String {
        format!("{SUBNET}.{}", u64::from(AGENT_HOST_BASE) + k)
    }

    /// The clients' address, where the harness also serves the agents' image registry.
    pub fn client_ip() -> String {
        format!("{SUBNET}.{CLIENT_HOST}")
    }

    pub fn node_ip(id: u64) -> String {
        format!("{SUBNET}.{id}")
    }

    /// Create the bridge, one namespace per node, per agent and one for the clients. On error
    /// what was made so far is removed when the returned error drops the half-built `Net`.
    pub fn create(prefix: &str, nodes: &[u64], agents: u64) -> Result<Net, HarnessError> {
        if agents > 50 {
            return Err(HarnessError::Setup(format!(
                "{agents} agents: at most 50 fit the test subnet"
            )));
        }
        if !nix::unistd::Uid::effective().is_root() {
            return Err(HarnessError::Setup(
                "flotilla-jepsen must run as root: it creates network namespaces and nftables rules"
                    .into(),
            ));
        }
        let mut net = Net {
            prefix: prefix.to_string(),
            nodes: nodes.to_vec(),
            agents: (1..=agents).collect(),
            created: Vec::new(),
        };
        let hub = format!("{prefix}-hub");
        net.add_ns(&hub)?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for id in nodes {
            let ns = net.node_ns(*id);
            net.attach(&hub, &ns, &format!("h{id}"), &Net::node_ip(*id))?;
        }
        for k in net.agents.clone() {
            let ns = net.agent_ns(k);
            net.attach(&hub, &ns, &format!("ha{k}"), &Net::agent_ip(k))?;
        }
        let c = net.client_ns();
        net.attach(&hub, &c, "hc", &Net::client_ip())?;
        Ok(net)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), HarnessError> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A namespace with one veth into the bridge, addressed `addr/24`.
    fn attach(&mut self, hub: &str, ns: &str, port: &str, addr: &str) -> Result<(), HarnessError> {
        self.add_ns(ns)?;
        ip(&[
            "-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", hub, "link", "set", port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Move the calling thread into the clients' namespace. Called before the async runtime
    /// starts: its threads inherit the namespace, so every socket the harness opens is there.
    pub fn enter_client_ns(&self) -> Result<(), HarnessError> {
        let path = format!("/run/netns/{}", self.client_ns());
        let f = std::fs::File::open(&path)
            .map_err(|e| HarnessError::Setup(format!("open {path}: {e}")))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| HarnessError::Setup(format!("setns {path}: {e}")))
    }

    /// `nft` inside server `id`'s namespace.
    fn nft(&self, id: u64, args: &[&str]) -> Result<String, HarnessError> {
        let ns = self.node_ns(id);
        let mut a = vec!["netns", "exec", ns.as_str(), "nft"];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Drop, at each node, what arrives from the nodes `drop_from[node]` names (one-way
    /// partitions are a map that is not symmetric). Replaces any earlier rules.
    pub fn partition(
        &self,
        drop_from: &std::collections::BTreeMap<u64, BTreeSet<u64>>,
    ) -> Result<(), HarnessError> {
        self.heal()?;
        for (node, peers) in drop_from {
            if peers.is_empty() {
                continue;
            }
            self.ensure_table(*node)?;
            let set: Vec<String> = peers.iter().map(|p| Net::node_ip(*p)).collect();
            let rule = format!("ip saddr {{ {} }} drop", set.join(", "));
            self.nft(*node, &["add", "rule", "inet", NFT_TABLE, "input", &rule])?;
        }
        Ok(())
    }

    /// Drop `percent` % of the packets every node receives from other nodes (nftables'
    /// random number generator). Stands in for `tc netem loss` where the kernel lacks netem.
    pub fn loss(&self, percent: u32) -> Result<(), HarnessError> {
        self.heal()?;
        for id in &self.nodes {
            self.ensure_table(*id)?;
            let rule = format!(
                "ip saddr {SUBNET}.0/24 ip saddr != {SUBNET}.{CLIENT_HOST} numgen random mod 100 < {percent} drop"
            );
            self.nft(*id, &["add", "rule", "inet", NFT_TABLE, "input", &rule])?;
        }
        Ok(())
    }

    /// Hand what servers `ids` receive from other servers and agents (not from the clients) to
    /// NFQUEUE `queue`; `--queue-bypass` lets packets through when nothing listens on it.
    /// iptables' (legacy) NFQUEUE target, since this kernel has no nftables `queue` expression.
    pub fn queue(&self, ids: &[u64], queue: u16) -> Result<(), HarnessError> {
        let q = queue.to_string();
        for id in ids {
            let ns = self.node_ns(*id);
            let client = format!("{SUBNET}.{CLIENT_HOST}");
            let subnet = format!("{SUBNET}.0/24");
            for rule in [
                vec!["-A", "INPUT", "-s", client.as_str(), "-j", "ACCEPT"],
                vec![
                    "-A",
                    "INPUT",
                    "-s",
                    subnet.as_str(),
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    q.as_str(),
                    "--queue-bypass",
                ],
            ] {
                let mut a = vec!["netns", "exec", ns.as_str(), "iptables-legacy"];
                a.extend(rule);
                ip(&a)?;
            }
        }
        Ok(())
    }

    /// Remove what [`Net::queue`] added.
    pub fn unqueue(&self, ids: &[u64]) -> Result<(), HarnessError> {
        for id in ids {
            let ns = self.node_ns(*id);
            ip(&["netns", "exec", &ns, "iptables-legacy", "-F", "INPUT"])?;
        }
        Ok(())
    }

    fn ensure_table(&self, id: u64) -> Result<(), HarnessError> {
        // `add` of an existing table or chain is a no-op, so this is idempotent.
        self.nft(id, &["add", "table", "inet", NFT_TABLE])?;
        self.nft(
            id,
            &[
                "add",
                "chain",
                "inet",
                NFT_TABLE,
                "input",
                "{ type filter hook input priority 0 ; policy accept ; }",
            ],
        )?;
        Ok(())
    }

    /// Remove every network fault.
    pub fn heal(&self) -> Result<(), HarnessError> {
        for id in &self.nodes {
            // Deleting a table that is not there is the normal case.
            let _ = self.nft(*id, &["delete", "table", "inet", NFT_TABLE]);
        }
        Ok(())
    }

    /// Delete every namespace this run made (their veths and the bridge go with them).
    pub fn destroy(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("flotilla-jepsen: teardown: {e}");
            }
        }
    }

    /// Remove namespaces left by earlier runs whose harness process is gone (killed hard).
    pub fn remove_stale() {
        let Ok(list) = ip(&["netns", "list"]) else {
            return;
        };
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix("fj") else {
                continue;
            };
            let Some((pid, _)) = rest.split_once('-') else {
                continue;
            };
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Namespaces carry the harness's pid so a later run can tell abandoned ones apart.
pub fn run_prefix() -> String {
    format!("fj{}", std::process::id())
}
