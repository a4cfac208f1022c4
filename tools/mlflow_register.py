#!/usr/bin/env python3
"""Register a directory of plain files as a new MLflow model version.

Logs every file under DIR (keeping subfolders) as an artifact of a new run,
under the artifact path "model", then creates a version of the registered
model NAME from that run's artifacts, creating the registered model first if
it does not exist. Needs only `pip install mlflow` (no torch: the files are
registered as they are, not as an MLflow flavor).

    python3 tools/mlflow_register.py --tracking-uri http://127.0.0.1:5000 \
        --name safety-candidate --dir ./model --alias champion \
        --tag base_model=meta-llama/Llama-3.1-8B-Instruct

Prints the new version number (a string such as "3") on stdout, alone.

`mlflow.register_model("runs:/<id>/model", ...)` cannot be used for plain
artifacts in MLflow 3 (it looks for a logged model), so the version is created
with `MlflowClient.create_model_version` and the run's artifact URI.
"""

import argparse
import os
import sys


def parse_tag(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--tag wants KEY=VALUE, got {text!r}")
    return key, value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="MLflow server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--dir", required=True, help="directory whose files become the version's artifacts")
    parser.add_argument("--alias", action="append", default=[], help="alias to point at the new version (repeatable)")
    parser.add_argument("--tag", action="append", default=[], type=parse_tag, help="version tag KEY=VALUE (repeatable)")
    parser.add_argument("--experiment", default="finetunes", help="experiment the run is logged under")
    args = parser.parse_args(argv)

    if not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir} is not a directory")
    if not any(files for _, _, files in os.walk(args.dir)):
        parser.error(f"--dir {args.dir} holds no files")

    # MLflow prints run links on stdout; send everything written to fd 1
    # to stderr, so that stdout carries the version alone.
    out = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)

    # Imported late so that --help works without mlflow installed.
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient()
    mlflow.set_experiment(args.experiment)
    with mlflow.start_run() as run:
        # log_artifacts keeps DIR's subfolders below "model".
        mlflow.log_artifacts(args.dir, artifact_path="model")
    try:
        client.create_registered_model(args.name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        args.name,
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags=dict(args.tag),
    )
    for alias in args.alias:
        client.set_registered_model_alias(args.name, alias, version.version)
    sys.stdout.flush()
    print(version.version, file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
