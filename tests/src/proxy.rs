//! A loopback TCP proxy that stands for a database cluster's endpoint: it forwards each
//! connection to the current target port, and can fence the target (every connection to it,
//! open or new, stops being forwarded but is never closed, as a fenced host behind a load
//! balancer that still acknowledges packets) and switch to another target (new connections
//! go there, as a DNS name that now points at the promoted replica). [`Throttle`] forwards
//! uploads at a fixed rate, as a slow link.

use std::sync::{Arc, Mutex, PoisonError};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy (see the module docs).
pub struct Proxy {
    port: u16,
    route: watch::Sender<Route>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    task: JoinHandle<()>,
}

/// Where new connections go, and whether the connections to that target are silenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    target: u16,
    /// Bumped by every fence: connections made before it go silent.
    fences: u64,
    silent: bool,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (route, _) = watch::channel(Route {
            target,
            fences: 0,
            silent: false,
        });
        let held = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept(listener, route.clone(), held.clone()));
        Self {
            port,
            route,
            held,
            task,
        }
    }

    /// The port clients dial.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Silences the current target: open connections stop being forwarded (their sockets stay
    /// open, nothing is answered), and new ones are accepted and never forwarded.
    pub fn fence(&self) {
        self.route.send_modify(|r| {
            r.fences += 1;
            r.silent = true;
        });
    }

    /// Sends new connections to 127.0.0.1:`target` from now on.
    pub fn switch(&self, target: u16) {
        self.route.send_modify(|r| {
            r.target = target;
            r.silent = false;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

async fn accept(
    listener: TcpListener,
    route: watch::Sender<Route>,
    held: Arc<Mutex<Vec<TcpStream>>>,
) {
    while let Ok((client, _)) = listener.accept().await {
        let now = *route.borrow();
        let hold = |socket| {
            held.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(socket)
        };
        if now.silent {
            hold(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", now.target)).await else {
            continue;
        };
        let mut fenced = route.subscribe();
        let held = held.clone();
        tokio::spawn(async move {
            let mut client = client;
            let mut server = server;
            let cut = {
                let forwarding = async {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    let _ = client.shutdown().await;
                };
                let silenced = fenced.wait_for(|r| r.fences > now.fences);
                tokio::select! {
                    () = forwarding => false,
                    _ = silenced => true,
                }
            };
            if cut {
                let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
                held.push(client);
                held.push(server);
            }
        });
    }
}

/// A loopback forwarder whose client-to-server direction moves at most a fixed number of
/// bytes per second (a slow uplink); answers come back at full speed.
pub struct Throttle {
    port: u16,
    task: JoinHandle<()>,
}

impl Throttle {
    /// Listens on a free loopback port and forwards to 127.0.0.1:`target`, uploads at
    /// `bytes_per_second`.
    pub async fn start(target: u16, bytes_per_second: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the throttle");
        let port = listener.local_addr().expect("throttle address").port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                tokio::spawn(async move {
                    let mut chunk = vec![0; 16 * 1024];
                    loop {
                        let n = match from_client.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if to_server.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                        let pause = n as f64 / bytes_per_second as f64;
                        tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                    }
                    let _ = to_server.shutdown().await;
                });
            }
        });
        Self { port, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
