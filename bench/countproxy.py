#!/usr/bin/env python3
"""A plain TCP proxy on loopback that counts the bytes clients send upstream.

Usage: countproxy.py LISTEN_PORT UPSTREAM_HOST:PORT OUT_FILE PID_FILE

Forwards every connection on 127.0.0.1:LISTEN_PORT to UPSTREAM. On SIGTERM it writes the
total number of bytes received from clients (request lines, headers and bodies: what a
client uploaded to the registry) to OUT_FILE and exits. It writes its process id to PID_FILE
once it is ready (`python3` may be a wrapper whose pid is not the proxy's). The bench uses it to measure the
bytes each tool actually uploads.
"""
import asyncio, os, signal, sys

total = 0


async def pipe(reader, writer, count):
    global total
    try:
        while True:
            data = await reader.read(1 << 18)
            if not data:
                break
            if count:
                total += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_r, client_w, host, port):
    try:
        up_r, up_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pipe(client_r, up_w, True), pipe(up_r, client_w, False))


async def main():
    listen, upstream, out, pidfile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    host, port = upstream.rsplit(":", 1)
    server = await asyncio.start_server(lambda r, w: handle(r, w, host, int(port)), "127.0.0.1", listen)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(pidfile + ".tmp", pidfile)
    async with server:
        await stop.wait()
    with open(out + ".tmp", "w") as f:
        f.write(f"{total}\n")
    os.rename(out + ".tmp", out)


asyncio.run(main())
