//! Separate hosts for real: three network namespaces, each with its own IP on a bridge
//! joined by veth pairs, one party process in each, running the demo across them.
//!
//! Needs root and iproute2; otherwise the test prints why it is skipped and passes.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn sh(args: &[&str]) -> Result<(), String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?}: {}",
            args,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

struct Net {
    ns: Vec<String>,
    bridge: String,
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = sh(&["ip", "netns", "del", n]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

fn build(tag: &str, subnet: &str) -> Result<Net, String> {
    let net = Net {
        ns: (0..3).map(|i| format!("ts{tag}n{i}")).collect(),
        bridge: format!("ts{tag}br"),
    };
    sh(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
    sh(&["ip", "link", "set", &net.bridge, "up"])?;
    for (i, ns) in net.ns.iter().enumerate() {
        let (inner, outer) = (format!("ts{tag}v{i}"), format!("ts{tag}b{i}"));
        sh(&["ip", "netns", "add", ns])?;
        sh(&[
            "ip", "link", "add", &inner, "type", "veth", "peer", "name", &outer,
        ])?;
        sh(&["ip", "link", "set", &inner, "netns", ns])?;
        sh(&["ip", "link", "set", &outer, "master", &net.bridge, "up"])?;
        let addr = format!("{subnet}.{}/24", i + 1);
        sh(&[
            "ip", "netns", "exec", ns, "ip", "addr", "add", &addr, "dev", &inner,
        ])?;
        sh(&["ip", "netns", "exec", ns, "ip", "link", "set", &inner, "up"])?;
        sh(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])?;
    }
    Ok(net)
}

#[test]
fn three_parties_in_three_network_namespaces() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.ok().as_deref() != Some("0") {
        println!("SKIPPED three_parties_in_three_network_namespaces: needs root to create network namespaces");
        return;
    }
    let tag = format!("{}", std::process::id() % 10000);
    let subnet = format!("10.{}.{}", 100 + std::process::id() % 100, 7);
    let net = match build(&tag, &subnet) {
        Ok(n) => n,
        Err(e) => {
            println!("SKIPPED three_parties_in_three_network_namespaces: cannot build the namespaces ({e})");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("tessera-netns-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = "setting = \"3pc\"\nfrac_bits = 16\nstart_timeout_s = 20\nio_timeout_s = 20\nkey_dir = \"keys\"\npreprocessing_dir = \"pre\"\n".to_string();
    for i in 0..3 {
        toml.push_str(&format!(
            "\n[[party]]\nid = {i}\naddr = \"{subnet}.{}:7100\"\n",
            i + 1
        ));
    }
    let cfg = dir.join("netns.toml");
    std::fs::write(&cfg, toml).unwrap();
    let o = Command::new(BIN)
        .args(["keygen", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kids: Vec<_> = net
        .ns
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    BIN,
                    "party",
                    "--config",
                    cfg.to_str().unwrap(),
                    "--id",
                    &i.to_string(),
                    "--",
                    "demo",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, k) in kids.into_iter().enumerate() {
        let o = k.wait_with_output().unwrap();
        let txt = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success(),
            "party {i} in its namespace failed:\n{txt}"
        );
        if i == 0 {
            assert!(txt.contains("): OK"), "{txt}");
        }
    }
    drop(net);
}
