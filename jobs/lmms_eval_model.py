"""`pave` as an lmms-eval model: the community's video task suite (VideoMME, MVBench, ...) on a `pave train` export
(or the base model alone), its features read from the feature store instead of decoding the task's videos.

    pip install -e '.[lmms-eval]'
    lmms-eval --model pave --model_args checkpoint=RUN/final --tasks videomme --batch_size 8

lmms-eval finds the model through the `lmms_eval.models` entry point (jobs/lmms_eval_registry.py). A question's
video is the path the task's doc_to_visual gives; it is read as the store item its file name names, as a folder
input names it (the name without the extension), so `pave materialize` over the task's video files writes the
store the task reads. Missing items, and two paths read as one item, are refused together before any generation.

Generation is `pave eval`'s (training/evaluation.py Generate): greedy, batched, each video's prompt prefix prefilled
once, the checkpoint's recorded store versions and base model checked as there. The prompt is the task's text as the
first user turn, the video before it, in the chat format the model was trained with. lmms-eval's gen_kwargs give the
answer length (`max_new_tokens`) and stop strings (`until`, cut after generation); sampling settings are not
followed (greedy, with a warning). One process: generation runs on its GPU (the CPU without one).
"""
import logging
import os

from lmms_eval.api.model import lmms
from tqdm import tqdm

from pipelines.annotations import Sample
from pipelines.sources import video_file_id
from pipelines.training_data import FetchFeatures, check_samples, modality_dtypes, sample_row
from training.config import ConfigError
from training.evaluation import EvalRequest, Generate, checked_versions, generation_order, stored_frames

# the answer length when neither the task nor the checkpoint gives one: the official video evaluators' budget
DEFAULT_MAX_NEW_TOKENS = 1024
# `pave eval`'s flags, as the messages of the code shared with it name them, and their spelling in --model_args
MODEL_ARGS = {"--checkpoint": "checkpoint", "--store": "store", "--base-model": "base_model",
              "--allow-mismatch": "allow_mismatch=true", "--max-new-tokens": "max_new_tokens"}
log = logging.getLogger(__name__)


def model_args_error(error: Exception) -> ValueError:
    """A refusal of the code shared with `pave eval`, its flags spelled as --model_args takes them."""
    message = str(error)
    for flag, arg in MODEL_ARGS.items():
        message = message.replace(flag, arg)
    return ValueError(f"pave: {message}")


def flag(name: str, value) -> bool:
    """A true/false model arg: lmms-eval gives true/false as bools and leaves any other word a string."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"pave: {name}={value}: give true or false")


class PaveModel(lmms):
    def __init__(self, checkpoint: str = "", store: str = "", base_model: str = "", batch_size: int | str = 1,
                 max_new_tokens: int = 0, compile: bool | None = None, allow_mismatch: bool = False,
                 device: str | None = None, max_batch_size: int | None = None):
        """`checkpoint`: a `pave train` final/ directory (empty: the base model alone); `store` and `base_model`:
        default the checkpoint's; `max_new_tokens`: the answer length for tasks that give none (default the
        checkpoint's recorded one). `batch_size`, `device` and `max_batch_size` are lmms-eval's flags for every model:
        questions per batch, and the GPU (`cuda:N`) to generate on; the batch size is not searched for."""
        super().__init__()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("pave: one process generates (launched by accelerate or torchrun with several, each "
                             "would take every question); run lmms-eval as one process, on one GPU")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"pave: --batch_size {batch_size}: give the number of questions per batch (1 or more)")
        if device and device.startswith("cuda:"):
            import torch

            torch.cuda.set_device(device)  # Generate's "cuda" is the current device
        elif device not in (None, "cuda"):
            log.warning("pave: --device %s is not used: generation runs on the GPU (cuda:N picks one), or on the "
                        "CPU without one", device)
        given = EvalRequest("", checkpoint, store, base_model, batch_size=int(batch_size),
                            max_new_tokens=int(max_new_tokens), allow_mismatch=flag("allow_mismatch", allow_mismatch),
                            compile=None if compile is None else flag("compile", compile))
        try:
            run, self.request = given.resolve()  # the checkpoint's store, base model and versions where not given
            self.versions = checked_versions(given, self.request, run)
        except ConfigError as e:
            raise model_args_error(e) from e
        self.fetch = FetchFeatures(self.versions)
        self.generate = Generate(self.request, run.model.newline, run.sides, modality_dtypes(self.versions))
        self.warned_of_sampling = False

    def _samples(self, requests) -> list[Sample]:
        """The sample of each lmms-eval request: the task's text as the question, its one video as a store item;
        refused together: requests without one video file, and two files read as one item."""
        samples, problems, paths = [], [], {}
        for index, request in enumerate(requests):
            context, _, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            video_id = video_file_id(visuals[0]) if len(visuals) == 1 and isinstance(visuals[0], str) else None
            if video_id is None:
                problems.append(f"task {task} document {doc_id}: expected one video file, got {visuals!r:.200} (pave "
                                "answers from one stored video per question: image and frame-folder tasks are not "
                                "supported)")
            elif paths.setdefault(video_id, visuals[0]) != visuals[0]:
                problems.append(f"task {task} document {doc_id}: {visuals[0]} and {paths[video_id]} are both read as "
                                f"store item {video_id!r}; evaluate them in separate runs, from stores that hold each")
            else:
                samples.append(Sample(str(index), video_id, (("user", context), ("assistant", ""))))
        if problems:
            raise ValueError(f"pave: {len(problems)} of {len(requests)} questions cannot be answered: "
                             + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
        return samples

    def _answer_budget(self, gen_kwargs: dict) -> int:
        """New tokens for a request's answer; warns once that sampling settings are not followed."""
        if not self.warned_of_sampling and (gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0)):
            log.warning("pave: generation is greedy; the task's sampling settings (%s) are not followed",
                        {k: gen_kwargs.get(k) for k in ("do_sample", "temperature")})
            self.warned_of_sampling = True
        return int(gen_kwargs.get("max_new_tokens") or self.request.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)

    def generate_until(self, requests) -> list[str]:
        samples = self._samples(requests)
        check_samples(samples, self.versions, f"the lmms-eval tasks {sorted({r.args[4] for r in requests})}")
        frames = stored_frames(self.versions["video"], samples)
        budgets = {s.id: self._answer_budget(r.args[1]) for s, r in zip(samples, requests)}
        answers, cut_short = {}, 0
        progress = tqdm(total=len(samples), desc="pave generating")
        for budget in sorted(set(budgets.values())):
            order = generation_order([s for s in samples if budgets[s.id] == budget], frames)
            self.generate.max_new_tokens = budget
            for start in range(0, len(order), self.request.batch_size):
                rows = [self.fetch(sample_row(s)) for s in order[start:start + self.request.batch_size]]
                generated = self.generate({key: [row[key] for row in rows] for key in rows[0]})
                answers.update(zip(generated["id"], generated["prediction"]))
                cut_short += sum(generated["hit_limit"])
                progress.update(len(rows))
        progress.close()
        if cut_short:
            log.warning("pave: %d of %d answers hit their limit of new tokens without their end (cut short); raise "
                        "it with max_new_tokens= in --model_args (tasks that set none) or --gen_kwargs", cut_short,
                        len(samples))
        return [cut_at_stops(answers[s.id], r.args[1].get("until")) for s, r in zip(samples, requests)]

    def loglikelihood(self, requests):
        raise NotImplementedError("pave: loglikelihood tasks (choices scored by likelihood) are not supported; run "
                                  "tasks whose output_type is generate_until")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("pave: multi-round generation is not supported; run tasks whose output_type is "
                                  "generate_until")


def cut_at_stops(text: str, until) -> str:
    """`text` up to the first of the stop strings (lmms-eval's `until`: a string or a list)."""
    for stop in [until] if isinstance(until, str) else until or []:
        if stop:
            text = text.split(stop)[0]
    return text
