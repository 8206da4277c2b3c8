"""A small authoritative DNS server for tests, on 127.0.0.1, UDP and TCP on the same ephemeral port.

Built on dnspython's message API and run as asyncio protocols in the test's own event loop.
Zones are a dict of owner name -> records, each record "TYPE RDATA" or "TTL TYPE RDATA":

    DNSServer({"good.test": ["MX 10 mx.good.test."], "mx.good.test": ["A 127.0.0.1"]})

Every name is answered from that dict (authoritative, AA set), CNAMEs inside it are followed, a name
with no record of the asked type gets NODATA and an unknown name NXDOMAIN, both with the origin's
SOA in the authority section (TTL and MINIMUM = `negative_ttl`) unless `send_soa` is False.
Behaviour by name (the name itself or any name below it): `drop` never answers, `servfail`
answers SERVFAIL, `refused` answers REFUSED, `delay` maps a name to seconds to wait before
answering. `drop_all` makes a black hole. UDP answers too big for the client's buffer are sent
truncated (TC), so the client retries over TCP. Every query received is counted in `queries`
((name, type) -> count) and `log` (in order, with the transport).
"""
from __future__ import annotations

import asyncio
import collections
import socket
import struct
from collections.abc import Iterable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def _in(name: str, names: Iterable[str]) -> bool:
    return any(name == n or name.endswith("." + n) for n in names)


class DNSServer:
    def __init__(self, zones: Mapping[str, Iterable[str]], *, origin: str = "test",
                 negative_ttl: int = 60, default_ttl: int = 300, drop: Iterable[str] = (),
                 servfail: Iterable[str] = (), refused: Iterable[str] = (),
                 delay: Mapping[str, float] | None = None, drop_all: bool = False):
        self.origin = origin.lower().rstrip(".")
        self.negative_ttl = negative_ttl
        self.send_soa = True
        self.drop = {n.lower().rstrip(".") for n in drop}
        self.servfail = {n.lower().rstrip(".") for n in servfail}
        self.refused = {n.lower().rstrip(".") for n in refused}
        self.delay = {k.lower().rstrip("."): v for k, v in (delay or {}).items()}
        self.drop_all = drop_all
        self.records: dict[str, dict[int, dns.rrset.RRset]] = {}
        for owner, lines in zones.items():
            for line in lines:
                self.add(owner, line, default_ttl)
        self.queries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.log: list[tuple[str, str, str]] = []  # (name, type, "udp" | "tcp")
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- zone data --------------------------------------------------------------------------

    def add(self, owner: str, record: str, default_ttl: int = 300) -> None:
        """Add one record, "TYPE RDATA" or "TTL TYPE RDATA", to `owner`."""
        name = owner.lower().rstrip(".")
        first, _, rest = record.strip().partition(" ")
        ttl = default_ttl
        if first.isdigit():
            ttl = int(first)
            first, _, rest = rest.strip().partition(" ")
        rdtype = dns.rdatatype.from_text(first)
        new = dns.rrset.from_text(name + ".", ttl, dns.rdataclass.IN, rdtype, rest.strip())
        node = self.records.setdefault(name, {})
        if rdtype in node:
            node[rdtype].update(new)
        else:
            node[rdtype] = new

    @property
    def total(self) -> int:
        """Queries received so far, all names and types."""
        return sum(self.queries.values())

    def count(self, name: str, rdtype: str | None = None) -> int:
        """Queries received for `name` (of `rdtype`, or of any type)."""
        name = name.lower().rstrip(".")
        return sum(n for (qn, qt), n in self.queries.items()
                   if qn == name and (rdtype is None or qt == rdtype))

    @property
    def address(self) -> str:
        """The "ip:port" string a resolver list takes."""
        return f"127.0.0.1:{self.port}"

    def _soa(self) -> dns.rrset.RRset:
        return dns.rrset.from_text(
            self.origin + ".", self.negative_ttl, dns.rdataclass.IN, dns.rdatatype.SOA,
            f"ns.{self.origin}. hostmaster.{self.origin}. 1 3600 600 86400 {self.negative_ttl}")

    def _exists(self, name: str) -> bool:
        """True for a name with records, the origin, or an empty non-terminal."""
        if name in self.records or name == self.origin:
            return True
        suffix = "." + name
        return any(owner.endswith(suffix) for owner in self.records)

    # --- answering --------------------------------------------------------------------------

    def answer(self, request: dns.message.Message, transport: str) -> dns.message.Message | None:
        """The response to `request`, or None to stay silent."""
        if not request.question:
            return None
        question = request.question[0]
        qname = question.name.to_text(omit_final_dot=True).lower()
        qtype = question.rdtype
        self.queries[(qname, dns.rdatatype.to_text(qtype))] += 1
        self.log.append((qname, dns.rdatatype.to_text(qtype), transport))
        if self.drop_all or _in(qname, self.drop):
            return None
        response = dns.message.make_response(request)
        response.flags |= dns.flags.AA
        if _in(qname, self.servfail):
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if _in(qname, self.refused):
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return response
        current, seen = qname, set()
        while True:
            node = self.records.get(current)
            if node is None:
                if not self._exists(current):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                if self.send_soa:
                    response.authority.append(self._soa())
                return response
            if qtype in node:
                response.answer.append(node[qtype])
                return response
            cname = node.get(dns.rdatatype.CNAME)
            if cname is not None and current not in seen:
                seen.add(current)
                response.answer.append(cname)
                current = cname[0].target.to_text(omit_final_dot=True).lower()
                continue
            if self.send_soa:  # NODATA
                response.authority.append(self._soa())
            return response

    async def _respond(self, data: bytes, transport: str) -> bytes | None:
        try:
            request = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if request.question:
            name = request.question[0].name.to_text(omit_final_dot=True).lower()
            wait = max((v for k, v in self.delay.items() if _in(name, [k])), default=0.0)
            if wait:
                await asyncio.sleep(wait)
        response = self.answer(request, transport)
        if response is None:
            return None
        if transport == "tcp":
            return response.to_wire()
        limit = max(512, request.payload) if request.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(request)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    # --- transports -------------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> "DNSServer":
        loop = asyncio.get_running_loop()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                async def reply():
                    wire = await server._respond(data, "udp")
                    if wire is not None and not self.transport.is_closing():
                        self.transport.sendto(wire, addr)
                server._spawn(reply())

        async def tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            try:
                while True:
                    head = await reader.readexactly(2)
                    data = await reader.readexactly(struct.unpack("!H", head)[0])
                    wire = await self._respond(data, "tcp")
                    if wire is None:
                        continue
                    writer.write(struct.pack("!H", len(wire)) + wire)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        # One port number for both transports: take a free UDP port, then TCP on the same number.
        for _ in range(20):
            udp, _proto = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(tcp_client, "127.0.0.1", port,
                                                 family=socket.AF_INET, reuse_address=True)
            except OSError:
                udp.close()
                continue
            self._udp, self._tcp, self.port = udp, tcp, port
            return self
        raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def __aenter__(self) -> "DNSServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()


# The zones tests/test_preflight.py runs against.
ZONES: dict[str, list[str]] = {
    "good.test": ["300 MX 10 mx.good.test.", "300 MX 20 mx2.good.test."],
    "mx.good.test": ["A 127.0.0.1"],
    "mx2.good.test": ["AAAA ::1"],
    "nullmx.test": ["600 MX 0 ."],
    "aonly.test": ["120 A 192.0.2.10"],
    "aaaaonly.test": ["120 AAAA 2001:db8::10"],
    "nomail.test": ['TXT "x"'],
    "alias.test": ["CNAME good.test."],
    "xn--bcher-kva.test": ["MX 10 mx.good.test."],
    "lag.test": ["MX 10 mx.good.test."],
    "bigmx.test": [f"MX {i} a-rather-long-mail-exchanger-host-name-number-{i:03d}.bigmx.test."
                   for i in range(40)],
}
