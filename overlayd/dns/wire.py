"""DNS messages in and out (dnspython): a query's bytes to the response's bytes.

``Responder`` answers from the current ``Zone`` (``overlayd.planning.names``), which the
agent replaces whenever the leases change. What it never does: answer a response (QR set:
no reflection loops), grow with what it is sent (the answer cache is bounded and dropped
with each new zone), or raise on bad input. Bytes too short for a header are dropped;
a header with an unparsable rest gets FORMERR; an opcode other than QUERY gets NOTIMP;
a class other than IN, or a name outside the zone, REFUSED (never an open resolver).
Over UDP an answer larger than 512 bytes (or the query's EDNS size, at most 1232) is
sent truncated (TC), so the client retries over TCP.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from overlayd.dns.fastpath import Rendered, plain_question, render, respond
from overlayd.planning.names import Answer, Rcode, Record, RType, Zone, resolve
from overlayd.values.names import TTL

UDP_SIZE = 512
"""The largest UDP answer without EDNS (RFC 1035)."""
EDNS_SIZE = 1232
"""The largest UDP answer we send with EDNS (the DNS flag day 2020 figure)."""
TCP_SIZE = 65535
MAX_QUERY = 4096
"""Queries larger than this are dropped unread (a real one is under 300 bytes)."""
CACHE_LIMIT = 10_000

_TYPES = {
    dns.rdatatype.A: RType.A,
    dns.rdatatype.ANY: RType.A,  # RFC 8482: a subset is a fine answer to ANY
    dns.rdatatype.PTR: RType.PTR,
    dns.rdatatype.NS: RType.NS,
    dns.rdatatype.SOA: RType.SOA,
}
_RCODES = {
    Rcode.NOERROR: dns.rcode.NOERROR,
    Rcode.NXDOMAIN: dns.rcode.NXDOMAIN,
    Rcode.REFUSED: dns.rcode.REFUSED,
}
_QR = 0x8000
_OPCODE_MASK = 0x7800
_HEADER = struct.Struct("!HHHHHH")


@dataclass
class Counters:
    """What the responder saw since it started (for the status port and the console)."""

    queries: int = 0
    answered: int = 0
    refused: int = 0
    nxdomain: int = 0
    malformed: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def _rrset(record: Record) -> dns.rrset.RRset:
    return dns.rrset.from_text(record.name + ".", TTL, "IN", record.rtype.value, record.data)


@dataclass(frozen=True, slots=True)
class _Rendered:
    rcode: dns.rcode.Rcode
    authoritative: bool
    answer: tuple[dns.rrset.RRset, ...]
    authority: tuple[dns.rrset.RRset, ...]


def _render(answer: Answer) -> _Rendered:
    return _Rendered(
        _RCODES[answer.rcode],
        answer.rcode is not Rcode.REFUSED,
        tuple(_rrset(r) for r in answer.answer),
        tuple(_rrset(r) for r in answer.authority),
    )


class Responder:
    """Answers queries from the zone set with ``set_zone`` (None: SERVFAIL, not ready)."""

    def __init__(self) -> None:
        self.counters = Counters()
        self._zone: Zone | None = None
        self._cache: dict[tuple[str, int], _Rendered] = {}
        self._wire_cache: dict[tuple[str, int], Rendered] = {}

    @property
    def zone(self) -> Zone | None:
        return self._zone

    def set_zone(self, zone: Zone) -> None:
        self._zone = zone
        self._cache, self._wire_cache = {}, {}

    def respond(self, wire: bytes, max_size: int) -> bytes | None:
        """The response to ``wire`` (None: send nothing); ``max_size``: what the transport
        can carry (``UDP_SIZE`` over UDP: EDNS may raise it, ``TCP_SIZE`` over TCP)."""
        self.counters.queries += 1
        if len(wire) < _HEADER.size or len(wire) > MAX_QUERY:
            self.counters.dropped += 1
            return None
        header = _HEADER.unpack_from(wire)
        if header[1] & _QR:
            self.counters.dropped += 1  # a response: answering it could start a loop
            return None
        fast = self._fast(wire)
        if fast is not None:
            return fast
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            self.counters.malformed += 1
            return _bare(header[0], header[1], dns.rcode.FORMERR)
        if query.opcode() != dns.opcode.QUERY:
            return _bare(header[0], header[1], dns.rcode.NOTIMP)
        if len(query.question) != 1:
            self.counters.malformed += 1
            return _bare(header[0], header[1], dns.rcode.FORMERR)
        response = self._answer(query)
        if query.edns >= 0 and max_size == UDP_SIZE:
            max_size = max(UDP_SIZE, min(query.payload, EDNS_SIZE))
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            response.answer, response.authority = [], []
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=max_size)

    def _fast(self, wire: bytes) -> bytes | None:
        """The plain query's response through ``fastpath`` (None: take the full path)."""
        question = plain_question(wire)
        if question is None or self._zone is None:
            return None
        key = (question.name.lower(), question.rdtype)
        rendered = self._wire_cache.get(key)
        if rendered is None:
            found = self._lookup(
                question.name,
                dns.rdatatype.RdataType.make(question.rdtype),
                dns.rdataclass.IN,
            )
            assert found is not None  # a zone is set
            rendered = render(found.rcode, found.authoritative, found.answer, found.authority)
            if len(self._wire_cache) >= CACHE_LIMIT:
                self._wire_cache = {}
            self._wire_cache[key] = rendered
        response = respond(wire, question, rendered)
        if response is not None:
            self._count(dns.rcode.Rcode.make(rendered.flags & 0xF))
        return response

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        question = query.question[0]
        response = dns.message.make_response(query, our_payload=EDNS_SIZE)
        response.flags &= ~dns.flags.RA  # we recurse for nobody
        rendered = self._lookup(question.name.to_text(), question.rdtype, question.rdclass)
        if rendered is None:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        response.set_rcode(rendered.rcode)
        if rendered.authoritative:
            response.flags |= dns.flags.AA
        response.answer = list(rendered.answer)
        response.authority = list(rendered.authority)
        self._count(rendered.rcode)
        return response

    def _lookup(
        self, name: str, rdtype: dns.rdatatype.RdataType, rdclass: dns.rdataclass.RdataClass
    ) -> _Rendered | None:
        zone = self._zone
        if zone is None:
            return None
        if rdclass != dns.rdataclass.IN:
            return _Rendered(dns.rcode.REFUSED, False, (), ())
        key = (name.lower(), rdtype)
        found = self._cache.get(key)
        if found is None:
            found = _render(resolve(zone, name, _TYPES.get(rdtype)))
            if len(self._cache) >= CACHE_LIMIT:
                self._cache = {}  # a flood of random names: start over, stay bounded
            self._cache[key] = found
        return found

    def _count(self, rcode: dns.rcode.Rcode) -> None:
        if rcode == dns.rcode.REFUSED:
            self.counters.refused += 1
        elif rcode == dns.rcode.NXDOMAIN:
            self.counters.nxdomain += 1
        else:
            self.counters.answered += 1


def _bare(query_id: int, flags: int, rcode: int) -> bytes:
    """A header-only response: for queries whose question cannot be trusted or used."""
    return _HEADER.pack(query_id, _QR | (flags & _OPCODE_MASK) | rcode, 0, 0, 0, 0)
