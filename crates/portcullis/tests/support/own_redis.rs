//! redis-server processes of a test's own, to kill, pause (SIGSTOP: the
//! process hangs with its sockets open, as a stuck server does) and resume,
//! without touching the shared servers. Include with
//! `#[path = "support/own_redis.rs"] mod own_redis;`.
#![allow(dead_code)]

use std::time::Duration;

/// One redis-server on a free port (or the given one), killed on drop.
pub struct OwnRedis {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server on port {port} did not start");
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

impl OwnRedis {
    /// Starts a server with no persistence.
    pub async fn start(port: Option<u16>) -> Self {
        Self::start_with(port.unwrap_or_else(free_port), &[]).await
    }

    async fn start_with(port: u16, extra: &[&str]) -> Self {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed for this test");
        wait_listening(port).await;
        Self {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().and_then(|c| c.id()).expect("running")
    }

    /// SIGSTOP: the server stops answering but keeps its connections.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Kills the server and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }
}

/// A three-master Redis Cluster of this test's own on `ports`, no replicas.
pub struct OwnCluster {
    pub nodes: Vec<OwnRedis>,
    dir: std::path::PathBuf,
}

impl OwnCluster {
    pub async fn start(ports: [u16; 3]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pcx_own_cluster_{}_{}",
            std::process::id(),
            ports[0]
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for port in ports {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "port {port} is taken; the test needs it for its own cluster"
            );
            let conf = dir.join(format!("nodes-{port}.conf"));
            nodes.push(
                OwnRedis::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        conf.to_str().unwrap(),
                        "--cluster-node-timeout",
                        "60000",
                        "--dir",
                        dir.to_str().unwrap(),
                    ],
                )
                .await,
            );
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli must be installed for this test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, dir };
        for node in &cluster.nodes {
            for i in 0.. {
                let info: String = cluster.query(node, redis::cmd("CLUSTER").arg("INFO")).await;
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(i < 200, "own cluster did not become ok");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    async fn query<T: redis::FromRedisValue>(&self, node: &OwnRedis, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(node.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async(&mut conn).await.unwrap()
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(OwnRedis::url).collect()
    }

    /// The node serving the slot of `key`.
    pub async fn node_for(&self, key: &str) -> &OwnRedis {
        let slot: u16 = self
            .query(
                &self.nodes[0],
                redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
            )
            .await;
        let nodes: String = self
            .query(&self.nodes[0], redis::cmd("CLUSTER").arg("NODES"))
            .await;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let port: u16 = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap();
            let owns = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            });
            if owns {
                return self.nodes.iter().find(|n| n.port == port).unwrap();
            }
        }
        panic!("no node serves slot {slot}");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            if let Some(pid) = n.child.as_ref().and_then(|c| c.id()) {
                // A paused node must be resumed to die of SIGTERM; SIGKILL
                // (kill_on_drop) works either way.
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
        }
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
