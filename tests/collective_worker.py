"""`python tests/collective_worker.py train-teacher ...`: the kdmt command line, with the pickled payload of
every object collective (broadcast_object_list, all_gather_object) that this process sends logged.

Environment: COLLECTIVE_LOG, the file to append "rank<TAB>bytes" to, a line a call.
"""

import os
import pickle
import sys
from pathlib import Path

import torch.distributed as dist

from kdmt.cli import main


def log_object_collectives(log: Path) -> None:
    """Wrap torch.distributed's object collectives in this process."""
    broadcast, gather = dist.broadcast_object_list, dist.all_gather_object

    def write(payload) -> None:
        with open(log, "a") as f:
            f.write(f"{dist.get_rank()}\t{len(pickle.dumps(payload))}\n")

    def logged_broadcast(object_list, src=0, *args, **kwargs):
        if dist.get_rank() == src:
            write(object_list)
        return broadcast(object_list, src, *args, **kwargs)

    def logged_gather(object_list, obj, *args, **kwargs):
        write(obj)
        return gather(object_list, obj, *args, **kwargs)

    dist.broadcast_object_list, dist.all_gather_object = logged_broadcast, logged_gather


if __name__ == "__main__":
    log_object_collectives(Path(os.environ["COLLECTIVE_LOG"]))
    sys.argv[0] = "kdmt"
    main()
