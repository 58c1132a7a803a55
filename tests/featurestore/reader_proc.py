"""A reader in its own process, for the node cache tests: reads every id through the node cache in CACHE and prints
{id: sha256 of its tokens} as JSON; the store URL reaches the S3 server by the AWS environment variables.

    reader_proc.py STORE CACHE ID...
"""
import hashlib
import json
import sys

from featurestore import FeatureStore


def main(url: str, cache_dir: str, *ids: str) -> None:
    version = FeatureStore(url, cache_dir=cache_dir).version("video")
    digests = {video_id: hashlib.sha256(version.get(video_id).tokens.tobytes()).hexdigest() for video_id in ids}
    print(json.dumps(digests))


if __name__ == "__main__":
    main(*sys.argv[1:])
