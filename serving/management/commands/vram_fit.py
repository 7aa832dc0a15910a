"""python manage.py vram_fit <model folder> [--gpu NAME[:TOTAL_GiB[:FREE_GiB]]]… [--gpus-per-replica N]
[--engine-kwargs JSON] [--json]

"Will it fit on…" before buying a GPU or deploying: the rule vLLM applies at start (serving/vram_fit/
estimation.py), term by term, for each GPU given — a known one by name (H100-80GB, A100-40GB, L4, …)
or any other as NAME:TOTAL_GiB, with :FREE_GiB when something else already holds memory there. With
no --gpu, every known GPU. Reads only the folder's config.json and safetensors headers: no GPU, no Ray,
no database. Exit 0 when the replica starts on every GPU given (on any, with no --gpu), 1 when it does
not, 2 when the folder or the options cannot be read.
"""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from serving.vram_fit import VramEstimateError, estimate, gib
from serving.vram_fit.report import on_gpu_figures
from serving.vram_fit.gpus import Gpu, known_gpus, parse_gpu


class Command(BaseCommand):
    help = "Whether one replica of a model folder starts on a GPU, by vLLM's own memory rule; no GPU needed."

    def add_arguments(self, parser):
        parser.add_argument("folder", help="a Hugging Face model folder (config.json and *.safetensors)")
        parser.add_argument("--gpu", action="append", default=[], metavar="NAME[:TOTAL_GiB[:FREE_GiB]]",
                            help="a GPU to check; repeat for several (default: every known GPU)")
        parser.add_argument("--gpus-per-replica", type=int, default=1, help="tensor × pipeline parallel GPUs per replica (default 1)")
        parser.add_argument("--engine-kwargs", default="{}", help='vLLM engine options as JSON, e.g. \'{"max_model_len": 8192}\'')
        parser.add_argument("--json", action="store_true", help="print the figures as JSON")

    def handle(self, *args, **options):
        try:
            engine_kwargs = json.loads(options["engine_kwargs"])
            if not isinstance(engine_kwargs, dict):
                raise ValueError("not a JSON object")
            if options["gpus_per_replica"] < 1:
                raise ValueError("--gpus-per-replica must be 1 or more")
            gpus = [parse_gpu(text) for text in options["gpu"]] or list(known_gpus())
            need = estimate(options["folder"], engine_kwargs, options["gpus_per_replica"])
        except (ValueError, VramEstimateError) as exc:
            raise CommandError(str(exc), returncode=2) from None
        rows = [self._row(need, gpu) for gpu in gpus]
        starts = [row["starts"] for row in rows]
        if options["json"]:
            self.stdout.write(json.dumps({"folder": options["folder"], "engine_kwargs": engine_kwargs, "gpus_per_replica": need.gpus_per_replica,
                                          "max_model_len": need.max_model_len, "kv_bytes_per_token": need.kv_bytes_per_token,
                                          "not_modelled": list(need.not_modelled), "gpus": rows}, indent=2))
        else:
            self._print(need, gpus, rows)
        fitted = all(starts) if options["gpu"] else any(starts)
        if not fitted:
            raise CommandError("does not fit" if options["gpu"] else "fits on none of the known GPUs", returncode=1)

    @staticmethod
    def _row(need, gpu: Gpu) -> dict:
        return {**on_gpu_figures(need, gpu.name, gpu.total_bytes, gpu.free_bytes), "total_source": gpu.source}

    def _print(self, need, gpus: list[Gpu], rows: list[dict]) -> None:
        w = need.weights
        self.stdout.write(
            f"{need.weights.tensors} tensors ({', '.join(f'{d} {gib(b)}' for d, b in w.checkpoint_bytes_by_dtype.items())}), served as {need.dtype}; "
            f"KV cache {need.kv_bytes_per_token:,} B per token ({need.kv_dtype}); max_model_len {need.max_model_len:,} ({need.max_model_len_from}); "
            f"{need.gpus_per_replica} GPU(s) per replica."
        )
        for gpu, row in zip(gpus, rows):
            budget = need.on_gpu(gpu.total_bytes, gpu.name)
            mark = "✔" if row["starts"] else "✖"
            self.stdout.write(f"\n{mark} {budget.verdict()}")
            self.stdout.write("   " + " | ".join(f"{term} {size}" for term, size, _ in budget.terms()))
            if budget.fits and not row["share_is_free"]:
                self.stdout.write(f"   But vLLM asks for its share of {gib(budget.share_bytes)} at start and only {gib(gpu.free)} is free: it refuses to start.")
            if row["advice"]:
                self.stdout.write(f"   {row['advice']}")
        for note in need.not_modelled:
            self.stdout.write(f"\nNot modelled: {note}.")
