use std::net::{SocketAddr, TcpStream, TcpListener, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use zonewall_tests::topology::Topology;

fn main() {
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("client").unwrap();
    topology.add_pod("server").unwrap();
    let server = topology.pod("server");
    let ip = server.ipv4;
    let ns = std::fs::File::open(server.netns.path()).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 5202)).unwrap();
        for s in l.incoming() { drop(s); }
    });
    std::thread::sleep(Duration::from_millis(200));
    let linger_mode = std::env::var("LINGER").is_ok();
    let r = topology.pod("client").netns.enter(move || {
        let target = SocketAddr::new(ip.into(), 5202);
        let mut times = vec![];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            let t = Instant::now();
            if let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                if std::env::var("WAITFIN").is_ok() { let mut b=[0u8;1]; let _ = std::io::Read::read(&mut stream, &mut b); }
                if linger_mode {
                let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                unsafe { libc::setsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as u32); }
                }
            }
            times.push(t.elapsed().as_micros());
        }
        times.sort();
        (times.len(), times[times.len()/2], times[times.len()*99/100], times[times.len()-1])
    }).unwrap();
    println!("{r:?}");
}
