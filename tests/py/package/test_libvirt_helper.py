"""`libvirt_info`: libvirt's answer corrected by the domain XML's `<mirror>`, as the drop-in's `native` source.
Here with a stand-in for a python-libvirt domain (its two methods); tests/python_package.rs runs the helper on a
real domain with a copy, beside libvirt's own answer."""

import pytest

from blockjobinfo import BlockJobInfoError, JobType, libvirt_info

XML = """<domain type='kvm'><name>d</name><devices>
<disk type='file' device='disk'><source file='/img/a.qcow2'/><target dev='vda' bus='virtio'/>{mirror}</disk>
<disk type='file' device='disk'><source file='/img/b.qcow2'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>"""


class Domain:
    def __init__(self, answer, mirror=""):
        self.answer, self.xml, self.calls = answer, XML.format(mirror=mirror), []

    def blockJobInfo(self, disk, flags):  # noqa: N802 - python-libvirt's name
        self.calls.append(("blockJobInfo", disk, flags))
        return self.answer

    def XMLDesc(self, flags):  # noqa: N802
        self.calls.append(("XMLDesc", flags))
        return self.xml


def answer(cur, end, type_=2, bandwidth=0):
    return {"type": type_, "bandwidth": bandwidth, "cur": cur, "end": end}


@pytest.mark.parametrize(
    "given,mirror,want",
    [
        # A copy at its end whose mirror is not ready: never done.
        (answer(10, 10), "<mirror type='file' file='/img/c.qcow2' format='qcow2' job='copy'/>", (9, 10)),
        (answer(10, 10), "<mirror type='file' file='/img/c.qcow2' job='copy' ready='pivot'/>", (9, 10)),
        # Ready: libvirt's answer stands.
        (answer(10, 10), "<mirror type='file' file='/img/c.qcow2' job='copy' ready='yes'/>", (10, 10)),
        # Not sized yet: 0/1, or 1/1 once ready.
        (answer(0, 0), "<mirror type='file' file='/img/c.qcow2' job='copy'/>", (0, 1)),
        (answer(0, 0), "<mirror type='file' file='/img/c.qcow2' job='copy' ready='yes'/>", (1, 1)),
        # Running: unchanged.
        (answer(4, 10), "<mirror type='file' file='/img/c.qcow2' job='copy'/>", (4, 10)),
        # A pull at its end has no mirror: done.
        (answer(10, 10, type_=1), "", (10, 10)),
    ],
)
def test_corrected_as_the_native_source(given, mirror, want):
    dom = Domain(given, mirror)
    info = libvirt_info(dom, "vda", 0)
    assert (info.cur, info.end) == want, (given, mirror, info)
    assert info.type == JobType(given["type"])
    # libvirt's answer is asked first, then the XML (only where it matters).
    assert dom.calls[0] == ("blockJobInfo", "vda", 0)


def test_no_job_and_bad_input():
    assert libvirt_info(Domain({}), "vda") is None
    with pytest.raises(TypeError):
        libvirt_info(Domain({}), 3)
    with pytest.raises(BlockJobInfoError):
        libvirt_info(Domain(answer(10, 10), "<mirror job='copy'"), "vda")
