"""Extended attributes the property tests set at random: names per kind and their values.

A few names and values, so that they collide and get removed: ``user.*``
(not on links: Linux refuses), ``trusted.*`` (links too), file capabilities
(``security.capability``, regular files) and POSIX ACLs (an access ACL sets
the mode's bits, a chmod its mask; a default ACL on a directory is inherited
by what is created in it). Shared by the replication and rewind properties (a
sibling module, as ``tests/faults`` shares ``journal_probe``).
"""

from __future__ import annotations

import os

from xoengine.testing import posix_acl

CAPABILITY = "security.capability"
CAPABILITIES = [
    bytes.fromhex("0100000200200000000000000000000000000000"),  # v2, cap_net_raw+p
    bytes.fromhex("0100000200040000000000000000000000000000"),  # v2, cap_net_bind_service+p
]
# For directories: the owner keeps rwx, as in the tests' directory modes (an access
# ACL sets the mode).
DIR_ACLS = [
    posix_acl(7, 5, 0, users=((1000, 7),), mask=7),
    posix_acl(7, 5, 5, users=((65534, 7), (1000, 4)), groups=((100, 6),), mask=5),
    posix_acl(7, 4, 4, mask=0),  # a mask and no named entry: the group bits are the mask's
    posix_acl(7, 5, 0),  # as a mode: the kernel keeps no attribute, it sets the mode bits
]
FILE_ACLS = [*DIR_ACLS, posix_acl(6, 4, 0, users=((1000, 6),), mask=6), posix_acl(6, 0, 0)]
XATTR_VALUES: dict[str, list[bytes]] = {
    "user.a": [b"", b"1", b"two", b"\x00\xff" * 40],
    "user.b": [b"1", b"caf\xe9"],
    "trusted.t": [b"", b"x", b"\xe9t\xe9"],
    CAPABILITY: CAPABILITIES,
    "system.posix_acl_access": FILE_ACLS,  # directories: DIR_ACLS
    "system.posix_acl_default": DIR_ACLS,
}
# Per kind, what may be set: user.* not on links (Linux refuses), capabilities on files
# (a setcap rule or operation sets them too).
XATTR_NAMES = {
    "file": ["user.a", "user.b", "trusted.t", CAPABILITY, "system.posix_acl_access"],
    "dir": ["user.a", "user.b", "trusted.t", "system.posix_acl_access", "system.posix_acl_default"],
    "symlink": ["trusted.t"],
}
if os.geteuid() != 0:  # trusted.* and capabilities are root's
    XATTR_NAMES = {
        kind: [n for n in names if n.startswith(("user.", "system."))]
        for kind, names in XATTR_NAMES.items()
    }
