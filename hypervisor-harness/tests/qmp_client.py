#!/usr/bin/env python3
"""Drive a VMM through QMP with QEMU's own client library (qemu.qmp), the same way for QEMU and
for hypervisor-harness: query-status, query-stats for the vm and vcpu targets, then quit.
Prints one JSON line: the status, and the numeric stats per target summed over providers and
objects (as hypervisor-harness's qemu.rs reads QEMU's answer). Usage: qmp_client.py SOCKET"""

import asyncio
import json
import sys

from qemu.qmp import QMPClient


def summed(answer):
    out = {}
    for provider in answer:
        for stat in provider["stats"]:
            if isinstance(stat["value"], int):
                out[stat["name"]] = out.get(stat["name"], 0) + stat["value"]
    return out


async def main(path):
    qmp = QMPClient("monitor-test")
    await qmp.connect(path)
    status = await qmp.execute("query-status")
    stats = {}
    for target in ("vm", "vcpu"):
        stats[target] = summed(await qmp.execute("query-stats", {"target": target}))
    await qmp.execute("quit")
    try:
        await qmp.disconnect()
    except EOFError:
        pass  # after quit the VMM closes the connection first, QEMU and ours alike
    print(json.dumps({"status": status, "stats": stats}))


asyncio.run(main(sys.argv[1]))
