"""A real S3 endpoint on loopback for the store tests and benchmarks: moto's threaded server (its in-memory S3 over
HTTP, on 127.0.0.1 and a free port), reached through s3fs like any S3 service; and Proxy, a loopback HTTP proxy in
front of it that logs every request (to count what a read costs, from any process) and can drop request headers
(a server that ignores If-None-Match)."""
import http.client
import logging
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


HOST = "127.0.0.1"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


@dataclass(frozen=True)
class Bucket:
    url: str  # s3://NAME
    storage_options: dict  # s3fs's, for FeatureStore(url, storage_options)
    env: dict  # the standard AWS variables: a subprocess with them reaches the bucket from the URL alone


class S3Server:
    def __init__(self):
        import boto3  # here, not at import: tests/conftest.py reads CREDENTIALS where moto is not installed (GPU image)
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
        self._moto = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)  # port 0: the OS picks a free one
        self._moto.start()
        self.endpoint = "http://{}:{}".format(*self._moto.get_host_and_port())
        self._s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, endpoint: str | None = None) -> Bucket:
        """A new, empty bucket with a unique name; reached through `endpoint` (a Proxy's) if given."""
        name = f"test-{uuid.uuid4().hex[:16]}"
        self._s3.create_bucket(Bucket=name)
        return self.reach(f"s3://{name}", endpoint)

    def reach(self, url: str, endpoint: str | None = None) -> Bucket:
        """The bucket at `url`, reached through `endpoint` (a Proxy's) or directly."""
        endpoint = endpoint or self.endpoint
        options = {"endpoint_url": endpoint, "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                   "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"], "client_kwargs": {"region_name": REGION}}
        return Bucket(url, options, {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})

    def stop(self) -> None:
        self._moto.stop()


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # /bucket/key?query
    range: str | None  # the Range header
    status: int
    nbytes: int  # response body bytes


class Proxy:
    """Forwards every request to `target` (http://host:port), without the headers named in `drop`, and appends a
    Request to `log`."""

    def __init__(self, target: str, drop: tuple[str, ...] = ()):
        self.log: list[Request] = []
        proxy, upstream = self, target.removeprefix("http://")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def forward(self):
                if not hasattr(self, "upstream"):  # one upstream connection per client connection
                    self.upstream = http.client.HTTPConnection(upstream, timeout=60)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                skip = {"expect", *(name.lower() for name in drop)}  # 100-continue was answered here already
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                self.upstream.request(self.command, self.path, body, headers)
                response = self.upstream.getresponse()
                data = response.read()
                proxy.log.append(Request(self.command, self.path, self.headers.get("Range"), response.status,
                                         len(data)))  # before the client has the answer, so counts are exact
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def requests(self, bucket: Bucket, method: str | None = None) -> list[Request]:
        """The logged requests on `bucket` (of `method`, if given)."""
        name = bucket.url.removeprefix("s3://")
        return [r for r in self.log if r.path.split("?")[0].split("/")[1] == name and method in (None, r.method)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
