"""Item claims with a lease, so that concurrent writers on one version write each item once.

claims/<key(item)>/<generation>.json holds {item, owner, expires}. The newest generation is the claim in force.
Taking an item (first claim, renewal, or takeover of an expired lease) means creating the next generation with an
exclusive create: of several racing writers exactly one gets it, with no locks and nothing to read-modify-write.
Leases use wall-clock time: keep writer clocks roughly in sync (NTP), and lease_s well above the skew."""
import hashlib
import time

from .files import Files


def _key(item: str) -> str:
    # Video ids may hold "/", spaces or be long: a fixed-length hash is always a valid file name.
    return hashlib.sha256(item.encode()).hexdigest()[:32]


def _current(files: Files, item_dir: str) -> tuple[int, dict | None]:
    """(newest generation number, its content), (-1, None) when the item was never claimed."""
    generations = [int(n.split(".")[0]) for n in files.children(item_dir, "file")]
    if not generations:
        return -1, None
    newest = max(generations)
    try:
        return newest, files.read_json(f"{item_dir}/{newest:09d}.json")
    except FileNotFoundError:  # gc removed the item's claims since the listing (they had expired): none in force
        return -1, None


def claim(files: Files, claims_dir: str, items: list[str], owner: str, lease_s: float) -> list[str]:
    """The items of `items` that `owner` now holds for `lease_s` seconds: unclaimed, expired, or already its own."""
    granted = []
    for item in items:
        item_dir = f"{claims_dir}/{_key(item)}"
        generation, current = _current(files, item_dir)
        now = time.time()
        if current and current["owner"] != owner and current["expires"] > now:
            continue
        record = {"item": item, "owner": owner, "expires": now + lease_s}
        if files.create_json(f"{item_dir}/{generation + 1:09d}.json", record):
            granted.append(item)
    return granted


def live(files: Files, claims_dir: str) -> dict[str, str]:
    """item -> owner, for every claim whose lease runs."""
    out = {}
    for key in files.children(claims_dir, "directory"):
        _, current = _current(files, f"{claims_dir}/{key}")
        if current and current["expires"] > time.time():
            out[current["item"]] = current["owner"]
    return out


def release(files: Files, claims_dir: str, owner: str) -> list[str]:
    """End every live lease of `owner` (a zero lease, as a new generation): for a job that stops early, so that
    any other job takes its items at once instead of waiting for the leases to run out."""
    mine = [item for item, holder in live(files, claims_dir).items() if holder == owner]
    return claim(files, claims_dir, mine, owner, lease_s=0)


def removable(files: Files, claims_dir: str, committed: set[str]) -> list[str]:
    """Claim directories that no writer needs any more: expired leases and claims of committed items."""
    out = []
    for key in files.children(claims_dir, "directory"):
        item_dir = f"{claims_dir}/{key}"
        _, current = _current(files, item_dir)
        if current is None or current["item"] in committed or current["expires"] <= time.time():
            out.append(item_dir)
    return out
