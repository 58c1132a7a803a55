"""Independent measurements for the corpus tests: decode with PyAV and measure, without the generator's code."""
import av
import numpy as np


def decode_video(path) -> tuple[dict, np.ndarray, list[np.ndarray]]:
    """Stream facts, frame times in seconds, RGB frames."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"codec": stream.codec_context.name, "width": stream.width, "height": stream.height,
                "average_rate": stream.average_rate, "n_audio": len(container.streams.audio)}
        frames = [(frame.time, frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)]
    return info, np.array([t for t, _ in frames]), [image for _, image in frames]


def decode_audio(path) -> tuple[dict, float, np.ndarray]:
    """Stream facts, time of the first decoded sample, samples [channels, n]."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        info = {"codec": stream.codec_context.name, "sample_rate": stream.sample_rate, "channels": stream.channels}
        frames = list(container.decode(stream))
    return info, frames[0].time, np.concatenate([frame.to_ndarray() for frame in frames], axis=1)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """Peak of a Hann-windowed spectrum, zero-padded 8x so the bins are far finer than the tolerance."""
    n_fft = 1 << int(np.ceil(np.log2(8 * len(samples))))
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)), n_fft))
    return float(np.fft.rfftfreq(n_fft, 1 / rate)[spectrum.argmax()])


def colour_centroid(image: np.ndarray, rgb, tolerance: int = 40) -> np.ndarray | None:
    """(x, y) mean of the pixels within `tolerance` of `rgb` in every channel; None if there are none."""
    ys, xs = np.nonzero((np.abs(image.astype(int) - rgb) < tolerance).all(-1))
    return np.array([xs.mean(), ys.mean()]) if len(xs) else None


def expected_centre(scene: dict, shape: dict, t: float, main_width: int, view: dict | None = None) -> np.ndarray:
    """Where the corpus docstring says a shape's centre is at main time t, in the main view or an exo view."""
    x, y = (np.interp(t, [scene["t0"], scene["t1"]], [a, b]) for a, b in zip(shape["start"], shape["end"]))
    if view is None:
        return np.array([x, y])
    x = main_width - 1 - x if view["mirror"] else x
    return np.array([x, y]) * view["scale"] + view["shift"]
