"""A writer in its own process, for the crash and concurrency tests.

    writer_proc.py STORE OWNER crash ID...   commit the first two ids, then add the rest in a second part (its full
                                             shards reach the disk), print "flushed" and wait to be killed
    writer_proc.py STORE OWNER race GO ID... wait until time GO, then claim and write the ids two at a time,
                                             print the ids written as JSON
"""
import json
import sys
import time

import fsdata
from featurestore import FeatureStore

# The crash writer's lease: long enough to still run while a loaded 2-core CI machine checks the store after the
# kill (1 s was not), short enough for the test to wait it out.
LEASE_S = 8.0


def main(url: str, owner: str, mode: str, *args: str) -> None:
    version = FeatureStore(url).version("video")
    if mode == "crash":
        ids = list(args)
        granted = version.claim(ids, owner, lease_s=LEASE_S)
        fsdata.write(version, granted[:2], owner)
        writer = version.writer(owner, shard_bytes=4 * 8 * 2 * 4)
        for video_id in granted[2:]:
            writer.add(video_id, **fsdata.rows(version.schema, video_id))
        print("flushed", flush=True)
        time.sleep(120)  # killed here, mid-part: never committed
    elif mode == "race":
        go, ids = float(args[0]), list(args[1:])
        time.sleep(max(0.0, go - time.time()))
        written = []
        for i in range(0, len(ids), 2):
            granted = version.claim(ids[i : i + 2], owner, lease_s=60)
            with version.writer(owner) as w:
                for video_id in granted:
                    w.add(video_id, **fsdata.rows(version.schema, video_id))
                    time.sleep(0.01)  # keep both writers busy at the same time
            written += granted
        print(json.dumps(written), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
