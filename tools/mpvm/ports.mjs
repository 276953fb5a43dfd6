// The two wires of an emulated meter, shared by device.mjs (one firmware run) and
// board.mjs (a virtual board behind a pseudo-terminal): the ports that
// firmware/emulated_adapters.py calls through the VM's JS bridge.
//
// - meterBus: the RS-485 meter bus as raw Modbus RTU frames over a TCP connection to the
//   meter simulator (tools.meter_sim --tcp); no address: nothing on the bus (frames go
//   nowhere, reads time out).
// - gatewayUdp: the board's UDP socket to the gateway; only the gateway's port is heard.
import dgram from "node:dgram";
import net from "node:net";

export function meterBus(meterTcp) {
  let sock = null;
  let buf = Buffer.alloc(0);
  let waiter = null;
  function connect() {
    const i = meterTcp.lastIndexOf(":");
    const s = net.connect({ host: meterTcp.slice(0, i), port: Number(meterTcp.slice(i + 1)) });
    s.setNoDelay(true);
    s.on("data", (d) => { buf = Buffer.concat([buf, d]); wake(); });
    s.on("error", () => {});
    s.on("close", () => { if (sock === s) sock = null; });
    sock = s;
  }
  function take(n) {
    const taken = buf.subarray(0, Math.min(n, buf.length));
    buf = buf.subarray(taken.length);
    return Buffer.from(taken).toString("hex");
  }
  function wake() {
    if (waiter && buf.length >= waiter.n) {
      const w = waiter; waiter = null; clearTimeout(w.timer); w.resolve(take(w.n));
    }
  }
  return {
    uart_write(hex) {
      if (!meterTcp) return;
      if (!sock) connect();
      sock.write(Buffer.from(hex, "hex"));
    },
    uart_read(n, timeoutMs) {
      return new Promise((resolve) => {
        if (buf.length >= n) { resolve(take(n)); return; }
        const timer = setTimeout(() => { waiter = null; resolve(take(n)); }, timeoutMs);
        waiter = { n, resolve, timer };
      });
    },
    uart_flush() { buf = Buffer.alloc(0); },
  };
}

// timeScale: device time per host time (a receive timeout in device milliseconds lasts
// timeoutMs / timeScale host milliseconds); onError: what a socket error does (a lost
// datagram either way: CoAP retransmits).
export function gatewayUdp({ timeScale = 1, onError = () => {} } = {}) {
  let sock = null;
  let gateway = null;
  const queue = [];
  let waiter = null;
  return {
    udp_open(host, port) {
      gateway = { host, port };
      if (sock) sock.close();
      sock = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
      sock.on("message", (msg, rinfo) => {
        if (rinfo.port !== gateway.port) return; // only the gateway talks to a meter
        if (waiter) { const w = waiter; waiter = null; clearTimeout(w.timer); w.resolve(msg.toString("hex")); }
        else if (queue.length < 16) queue.push(msg.toString("hex"));
      });
      sock.on("error", onError);
      sock.bind(0);
    },
    udp_send(hex) {
      sock.send(Buffer.from(hex, "hex"), gateway.port, gateway.host, () => {});
    },
    udp_recv(timeoutMs) {
      return new Promise((resolve) => {
        if (queue.length) { resolve(queue.shift()); return; }
        const timer = setTimeout(() => { waiter = null; resolve(null); }, Math.max(0, timeoutMs / timeScale));
        waiter = { resolve, timer };
      });
    },
  };
}
