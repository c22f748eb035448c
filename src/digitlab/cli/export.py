"""``digitlab export``: a trained model as ONNX (fp32, optionally int8), verified on its own test set."""

from __future__ import annotations

import argparse
import json

from digitlab.cli import HelpFormatter, add_data_args, add_device_arg, add_json_arg, add_model_arg, add_quiet_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained model to ONNX (fp32 / int8) and verify it",
        formatter_class=HelpFormatter,
        description="Export with torch.onnx (torch.export-based exporter, TorchScript fallback), check the "
                    "graph with onnx.checker, and compare onnxruntime with PyTorch on the whole test set of "
                    "the model's own dataset (--dataset overrides it). --quantize int8 also writes a "
                    "statically quantized copy (FILE.int8.onnx). Existing files are never overwritten. "
                    "Needs the digitlab[onnx] extra.",
        epilog="examples:\n  digitlab export default --out digits.onnx\n"
               "  digitlab export runs/a --format onnx\n"
               "  digitlab export runs/fashion --format onnx --json     # verified on Fashion-MNIST\n"
               "  digitlab export runs/a --format onnx --quantize int8 --json\n"
               "  digitlab export --model model.safetensors --out deploy/digits.onnx --benchmark")
    add_model_arg(p, positional=True, default=None)
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write an int8 model (static quantization calibrated on training images)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the fp32 .onnx FILE to write (a new file; default: RUN/model.onnx, ./default.onnx for "
                        "the shipped model); int8 goes next to it as FILE.int8.onnx")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                   help="torch exporter; auto = torch.export-based, TorchScript if that fails")
    p.add_argument("--no-verify", dest="verify", action="store_false", default=argparse.SUPPRESS,
                   help="skip the test-set comparison (only 64 random inputs are compared)")
    p.add_argument("--calibration-size", type=int, default=1000, help="training images for int8 calibration")
    p.add_argument("--benchmark", action="store_true",
                   help="also time eager PyTorch vs the ONNX models (batch-1 latency, throughput)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per backend for --benchmark")
    add_data_args(p, from_run=True)
    add_device_arg(p)
    add_json_arg(p, "the export report")
    add_quiet_arg(p)
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from digitlab.cli import model_from_args, require_extra
    from digitlab.errors import ConfigError

    for module in ("onnx", "onnxruntime"):
        require_extra(module, "onnx")
    from digitlab.inference.export import benchmark_inference, export_onnx

    model = model_from_args(args)
    if args.calibration_size < 1 or args.threads < 1:
        raise ConfigError("--calibration-size and --threads must be positive")
    report = export_onnx(model, args.out, quantize=args.quantize, opset=args.opset, exporter=args.exporter,
                         verify=getattr(args, "verify", True), dataset=args.dataset, data_dir=args.data_dir,
                         calibration_size=args.calibration_size, device=args.device,
                         progress=not (args.json or args.quiet))
    if args.benchmark:
        models = {"onnx-fp32": report["onnx"]["path"]}
        if "int8" in report:
            models["onnx-int8"] = report["int8"]["path"]
        report["benchmark"] = benchmark_inference(model, models, threads=args.threads)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"exported {report['model']} ({report['dataset']} model) with the {report['exporter']} exporter "
          f"(opset {report['opset']}) "
          f"-> {report['onnx']['path']} ({report['onnx']['bytes'] / 1024:.0f} KiB; "
          f"checkpoint {report['checkpoint_bytes'] / 1024:.0f} KiB)")
    if "exporter_fallback_reason" in report:
        print(f"  (torch.export-based exporter failed: {report['exporter_fallback_reason']})")
    v = report["verification"]
    where = f"{v['dataset']} {v['split']}" if v.get("dataset") else "random inputs"
    print(f"  onnxruntime vs torch on {v['images']} {where} images: argmax agreement "
          f"{100 * v['argmax_agreement']:.2f}%, max |Δprob| {v['max_abs_prob_diff']:.2e}"
          + (f", accuracy {100 * v['accuracy']:.2f}% (torch {100 * v['accuracy_torch']:.2f}%)"
             if "accuracy" in v else ""))
    if "int8" in report:
        q = report["int8"]
        print(f"  int8 -> {q['path']} ({q['bytes'] / 1024:.0f} KiB, {100 * q['size_ratio']:.0f}% of fp32): "
              f"accuracy {100 * q['accuracy']:.2f}% ({q['accuracy_change_points']:+.2f} points vs fp32), "
              f"agreement with torch {100 * q['argmax_agreement_with_torch']:.2f}%")
    if "benchmark" in report:
        b = report["benchmark"]
        print(f"  benchmark ({b['threads']} thread(s)):")
        for name, r in b["backends"].items():
            print(f"    {name:12s} batch-1 p50 {r['batch1_p50_ms']:.3f} ms  p95 {r['batch1_p95_ms']:.3f} ms  "
                  f"throughput {r['throughput_images_per_s']:.0f} img/s (batch {r['throughput_batch']})")
    return 0
