"""The common query answered without dnspython's message objects: a plain question.

Most queries a stub resolver sends are one question, no other records, class IN, no
compression in the name: for those the response is the query's header and question
(copied as sent, so the name keeps its case) followed by answer and authority records
rendered once per zone (``rendered``: the answer's owner is a pointer to the question's
name, the authority's owner written out). Anything else (EDNS, several questions,
trailing bytes, odd names) returns None and takes the full path through dnspython,
which gives the same answer; the component tests check both paths agree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.rrset

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_POINTER_TO_QNAME = b"\xc0\x0c"
_QR, _AA, _RD = 0x8000, 0x0400, 0x0100
MAX_FAST = 512


@dataclass(frozen=True, slots=True)
class Question:
    """A plain query's question: where it ends in the wire, its name as text, its type."""

    end: int
    name: str
    rdtype: int


def plain_question(wire: bytes) -> Question | None:
    """The question of a plain query (see the module's docstring), else None."""
    _, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if flags & 0x7800 or (qdcount, ancount, nscount, arcount) != (1, 0, 0, 0):
        return None  # another opcode, or more than one plain question
    labels, pos = [], _HEADER.size
    while pos < len(wire) and (size := wire[pos]) != 0:
        label = wire[pos + 1 : pos + 1 + size]
        if size > 63 or len(label) != size or not label.isascii() or b"." in label:
            return None
        labels.append(label.decode())
        pos += 1 + size
    if pos + 5 != len(wire) or len(labels) > 127:
        return None
    rdtype, rdclass = struct.unpack_from("!HH", wire, pos + 1)
    if rdclass != 1:
        return None
    return Question(pos + 5, ".".join(labels) + ".", rdtype)


@dataclass(frozen=True, slots=True)
class Rendered:
    """The records of one answer in wire form, ready to follow a copied question."""

    flags: int  # AA and the rcode
    counts: tuple[int, int]  # answer and authority records
    body: bytes


def render(
    rcode: int,
    authoritative: bool,
    answer: tuple[dns.rrset.RRset, ...],
    authority: tuple[dns.rrset.RRset, ...],
) -> Rendered:
    body, counts = bytearray(), [0, 0]
    for section, rrsets in enumerate((answer, authority)):
        for rrset in rrsets:
            owner = _POINTER_TO_QNAME if section == 0 else rrset.name.to_wire()
            assert owner is not None
            for rdata in rrset:
                data = rdata.to_wire()
                assert data is not None
                body += owner + _RR.pack(rrset.rdtype, rrset.rdclass, rrset.ttl, len(data))
                body += data
                counts[section] += 1
    return Rendered((_AA if authoritative else 0) | rcode, (counts[0], counts[1]), bytes(body))


def respond(wire: bytes, question: Question, rendered: Rendered) -> bytes | None:
    """The response to the plain query ``wire`` (None: too large for this path)."""
    query_id, flags = _HEADER.unpack_from(wire)[:2]
    an, ns = rendered.counts
    header = _HEADER.pack(query_id, _QR | (flags & _RD) | rendered.flags, 1, an, ns, 0)
    out = header + wire[_HEADER.size : question.end] + rendered.body
    return out if len(out) <= MAX_FAST else None
