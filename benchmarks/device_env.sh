# Sourced by the device scripts (gpu_*.sh): installs what the GPU image lacks from .whl/ (git-ignored, carried; 64 MiB
# at most with the working tree) into /tmp/site. .whl/ holds pure wheels (zarr, donfig, google-crc32c, pydantic +
# core, annotated-types, typing-inspection, tyro, typeguard, docstring-parser, jsonschema + specifications,
# referencing, rpds-py, tensorboardX, webdataset, braceexpand, pytest, pluggy, iniconfig, pytest-timeout) and xz
# tarballs of wheels unpacked with their shared libraries stripped (`strip --strip-unneeded`): ray.tar.xz (Ray 2.60
# cp312 without ray/jars and ray/dashboard/client, 30 MB), av.tar.xz (PyAV 18.1, 20 MB), numcodecs.tar.xz (0.7 MB),
# nvc.tar.xz (PyNvVideoCodec 2.2.4 without its samples and FFmpeg sources, 3 MB).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
for tarball in .whl/*.tar.xz; do tar xJf "$tarball" -C /tmp/site; done
[ -d /tmp/site/ray/core/src ] && find /tmp/site/ray/core/src -type f -exec chmod +x {} +  # Ray's servers
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
