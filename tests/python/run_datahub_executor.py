#!/usr/bin/env python3
"""Run ONE RUN_INGEST execution request through DataHub's own Python executor engine.

Used by the Rust benchmark to compare our executor with the reference engine
(`datahub.executor` from acryl-datahub, e.g. 1.7.0.17). The wiring copies what
datahub-actions' ExecutorAction does:

  * a DataHubGraph built from a DatahubClientConfig (server + token);
  * one ReportingExecutor (id "default") with the default task configs
    RUN_INGEST -> SubProcessIngestionTask and TEST_CONNECTION ->
    SubProcessTestConnectionTask, both with empty configs (engine defaults:
    progress every 2 s, /tmp/datahub/ingest, /tmp/datahub/logs, ...);
  * secret stores [env, datahub] (datahub store shares the graph client), or
    only [env] with --secret-stores env;
  * the request goes through DefaultDispatcher.dispatch(), which runs
    ReportingExecutor.execute() on a new thread (kickoff RUNNING MCP, task on
    its own asyncio loop, progress MCPs, completion MCP with retries); this
    script joins that thread.

Usage (with the python of the venv that has acryl-datahub installed):

  python run_datahub_executor.py --gms-url URL --token TOKEN --recipe-file FILE \
      [--exec-id ID] [--version native] [--secret-stores env,datahub|env]

The recipe file may be JSON or YAML; it is passed as the `recipe` arg (JSON
text) with `version` (default `native`: the CLI runs from this same venv, no
venv is built) and `debug_mode` "false".

stdout receives exactly one line at the end:

  RESULT status=<final status> wall=<seconds> maxrss_kb=<ru_maxrss of this process>

Everything the engine prints on stdout (e.g. dispatch_async's
pretty_print_summary) is redirected to stderr so the RESULT line stays alone.
`wall` covers dispatch -> thread joined, i.e. kickoff emit, task, completion
emit; it excludes interpreter start, imports and the executor construction
(GET /config). Exit code: 0 if the status is SUCCESS, else 1.
"""

import argparse
import json
import logging
import os
import resource
import sys
import time
import uuid

# Same root logging setup as the datahub-actions entrypoint (non-debug mode):
# basicConfig with its format on stderr, root logger at WARNING.
BASE_LOGGING_FORMAT = "[%(asctime)s] %(levelname)-8s {%(name)s:%(lineno)d} - %(message)s"

RUN_INGEST_TASK_TYPE = (
    "datahub.executor.execution.sub_process_ingestion_task.SubProcessIngestionTask"
)
TEST_CONNECTION_TASK_TYPE = (
    "datahub.executor.execution.sub_process_test_connection_task."
    "SubProcessTestConnectionTask"
)


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gms-url", required=True, help="GMS base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", required=True, help="access token (sent as Bearer)")
    p.add_argument("--recipe-file", required=True, help="ingestion recipe, JSON or YAML")
    p.add_argument("--exec-id", default=None, help="execution request id (default: random uuid4)")
    p.add_argument("--version", default="native", help="`version` task arg (default: native)")
    p.add_argument(
        "--secret-stores",
        default="env,datahub",
        choices=["env,datahub", "env"],
        help="secret stores to configure (default: env,datahub, as datahub-actions does)",
    )
    return p.parse_args(argv)


def _load_recipe(path):
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        recipe = json.loads(text)
    except ValueError:
        import yaml

        recipe = yaml.safe_load(text)
    if not isinstance(recipe, dict):
        raise SystemExit(f"recipe file {path} does not contain a mapping")
    return recipe


def main(argv=None):
    args = _parse_args(argv)

    # Keep stdout for the single RESULT line: point fd 1 at stderr for the
    # engine (and anything it prints), remember the real stdout.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)

    logging.basicConfig(format=BASE_LOGGING_FORMAT)
    logging.getLogger().setLevel(logging.WARNING)

    status = "ERROR"
    wall = 0.0
    try:
        status, wall = _run(args)
    except BaseException as e:  # report a RESULT line whatever happens
        logging.getLogger("run_datahub_executor").exception("runner failed: %s", e)
        status = "ERROR"
    finally:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        line = f"RESULT status={status} wall={wall:.6f} maxrss_kb={maxrss}\n"
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os.write(result_fd, line.encode())
    return 0 if status == "SUCCESS" else 1


def _run(args):
    # Imports are here so that their cost is not mixed into argument errors.
    from datahub.executor.dispatcher.default_dispatcher import DefaultDispatcher
    from datahub.executor.execution.reporting_executor import (
        ReportingExecutor,
        ReportingExecutorConfig,
    )
    from datahub.executor.execution.task import TaskConfig
    from datahub.executor.request.execution_request import ExecutionRequest
    from datahub.ingestion.graph.client import DatahubClientConfig, DataHubGraph
    from datahub.secret.datahub_secret_store import DataHubSecretStoreConfig
    from datahub.secret.secret_store import SecretStoreConfig

    recipe = _load_recipe(args.recipe_file)
    exec_id = args.exec_id or str(uuid.uuid4())

    # Graph client, as datahub-actions builds it from its `datahub:` block.
    graph = DataHubGraph(DatahubClientConfig(server=args.gms_url, token=args.token))

    # Default task configs of datahub-actions' ExecutorAction.
    task_configs = [
        TaskConfig(name="RUN_INGEST", type=RUN_INGEST_TASK_TYPE, configs={}),
        TaskConfig(name="TEST_CONNECTION", type=TEST_CONNECTION_TASK_TYPE, configs={}),
    ]

    secret_stores = [SecretStoreConfig(type="env", config={})]
    if args.secret_stores == "env,datahub":
        secret_stores.append(
            SecretStoreConfig(
                type="datahub",
                config=DataHubSecretStoreConfig(graph_client=graph).model_dump(),
            )
        )

    executor = ReportingExecutor(
        ReportingExecutorConfig(
            id="default",
            task_configs=task_configs,
            secret_stores=secret_stores,
            graph_client=graph,
        )
    )
    dispatcher = DefaultDispatcher([executor])

    # dispatch_async() discards the ExecutionResult; capture it on the way out
    # without changing what the engine does.
    captured = {}
    engine_execute = executor.execute

    def execute_and_capture(request):
        try:
            result = engine_execute(request)
        except BaseException as e:
            captured["error"] = e
            raise
        captured["result"] = result
        return result

    executor.execute = execute_and_capture  # type: ignore[method-assign]

    # What ExecutorAction builds from a dataHubExecutionRequestInput MCL:
    # every arg is a string.
    request = ExecutionRequest(
        executor_id="default",
        exec_id=exec_id,
        name="RUN_INGEST",
        args={
            "recipe": json.dumps(recipe),
            "version": args.version,
            "debug_mode": "false",
        },
    )

    t0 = time.perf_counter()
    dispatcher.dispatch(request)
    # The dispatch thread removes itself from dispatcher.threads as the very last
    # step, so either we see it here and join it, or it has already finished.
    for thread in list(dispatcher.threads.values()):
        thread.join()
    wall = time.perf_counter() - t0

    try:
        executor.shutdown()
    except Exception:
        pass
    try:
        graph.close()
    except Exception:
        pass

    if "result" in captured:
        status = captured["result"].type.name
    elif "error" in captured:
        status = "DISPATCH_FAILED"
    else:
        status = "ERROR"
    return status, wall


if __name__ == "__main__":
    sys.exit(main())
