#!/usr/bin/env python3
"""deploy/validate.py - offline checks of the deployment files (no Docker, no cluster).

    python3 deploy/validate.py [--sheaf build/cli/sheaf]

1. Every YAML file under deploy/ parses (PyYAML safe_load_all).
2. compose.yaml: services have an image, depends_on / volumes name things that exist,
   every ${VAR} without a default is documented in .env.example, the kafka-init
   script passes `bash -n` after compose's $$ -> $ unescaping, and runs against stub
   kafka-topics.sh / kafka-configs.sh with the expected topics, partitions, retention.
3. Dockerfile: every COPY source (outside --from) exists in the repository, no build*/
   directory is copied, the runtime stage is non-root and has no ENTRYPOINT.
4. k8s/kustomization.yaml lists files that exist and every k8s YAML is listed; every
   ConfigMap/Secret referenced by a Deployment is defined; KEDA's trigger matches the
   ConfigMap's brokers, worker.group and topic.prefix; maxReplicaCount <= partitions;
   terminationGracePeriodSeconds > worker.drain_ms.
5. Kafka agrees with the tests' brokers: compose's apache/kafka image tags are
   dev/kafka/pom.xml's kafka.version (the version dev/kafka-kraft.sh and CI run); the
   broker's KAFKA_* settings equal those dev/kafka-kraft.sh writes for one node, except
   the ones listed in KAFKA_DIFFERENCES with the reason; the KRaft essentials are set on
   both; kafka-init gives every topic the max.message.bytes of dev/kafka_topics.c.
6. With --sheaf: the sheaf binary loads compose/sheaf.conf and the ConfigMap's sheaf.conf
   with the environment the manifests give it (`sheaf config`), so every key and every
   SHEAF_* variable used is one sheaf accepts.
Exit status 0 when everything passed; each failure is printed.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
    return cond


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def yaml_files():
    out = []
    for root, _dirs, files in os.walk(HERE):
        for name in files:
            if name.endswith((".yaml", ".yml")):
                out.append(os.path.join(root, name))
    return sorted(out)


def compose_unescape(text, env):
    """Compose interpolation: $$ -> $, ${VAR:-default} / ${VAR:?msg} / ${VAR}."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(2), m.group(3), m.group(4)
        val = env.get(name)
        if op == ":-" and not val:
            return arg
        if op == ":?" and not val:
            raise KeyError(name)
        return val or ""
    return re.sub(r"\$\$|\$(\{([A-Za-z_][A-Za-z0-9_]*)(:-|:\?)?([^}]*)\})", sub, text)


def conf_value(conf_text, key):
    for line in conf_text.splitlines():
        line = line.strip()
        if line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        if k.strip() == key:
            return v.strip()
    return None


def check_compose(sheaf):
    path = os.path.join(HERE, "compose.yaml")
    doc = load_all(path)[0]
    services = doc.get("services", {})
    volumes = set((doc.get("volumes") or {}).keys())
    check(set(services) >= {"kafka", "kafka-init", "redis", "worker", "reducer", "cli"},
          "compose: services kafka, kafka-init, redis, worker, reducer, cli")
    for name, svc in services.items():
        check("image" in svc or "build" in svc, f"compose: {name} has an image or a build")
        deps = svc.get("depends_on") or {}
        for dep in deps:
            check(dep in services, f"compose: {name} depends_on {dep} exists")
        for v in svc.get("volumes") or []:
            src = v.split(":", 1)[0]
            if src.startswith((".", "/", "$")):
                if not src.startswith("$"):
                    check(os.path.exists(os.path.join(HERE, src)),
                          f"compose: {name} bind source {src} exists")
            else:
                check(src in volumes, f"compose: {name} volume {src} is declared")
    check(str(services["worker"].get("deploy", {}).get("replicas", "")).startswith("${WORKER_REPLICAS"),
          "compose: worker deploy.replicas from WORKER_REPLICAS")
    for name in ("kafka", "redis"):
        check("healthcheck" in services[name], f"compose: {name} has a healthcheck")
    # Interpolated variables without a default must be in .env.example.
    text = open(path).read()
    env_example = open(os.path.join(HERE, ".env.example")).read()
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", env_example, re.M))
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    for var in sorted(used):
        check(var in documented, f"compose: ${{{var}}} is documented in .env.example")
        check(not var.startswith("SHEAF_"),
              f"compose: interpolation variable {var} is not named SHEAF_* (sheaf refuses unknown ones)")

    # The kafka-init script: unescape as compose would, syntax-check, run against stubs.
    init = services["kafka-init"]
    script = compose_unescape(init["command"][0], {})
    env = {k: compose_unescape(str(v), {}) for k, v in init["environment"].items()}
    with tempfile.TemporaryDirectory() as tmp:
        spath = os.path.join(tmp, "init.sh")
        open(spath, "w").write(script)
        r = subprocess.run(["bash", "-n", spath], capture_output=True, text=True)
        check(r.returncode == 0, "compose: kafka-init script passes bash -n " + r.stderr.strip())
        bindir = os.path.join(tmp, "opt", "kafka", "bin")
        os.makedirs(bindir)
        log = os.path.join(tmp, "calls")
        for tool in ("kafka-topics.sh", "kafka-configs.sh"):
            stub = os.path.join(bindir, tool)
            open(stub, "w").write(f'#!/bin/bash\nprintf "%s" "{tool}" >> {log}\n'
                                  f'for a in "$@"; do printf " [%s]" "$a" >> {log}; done\n'
                                  f'echo >> {log}\n')
            os.chmod(stub, 0o755)
        script_local = script.replace("/opt/kafka/bin", bindir)
        r = subprocess.run(["bash", "-euc", script_local], env=dict(os.environ, **env),
                           capture_output=True, text=True)
        check(r.returncode == 0, "compose: kafka-init script runs against stub tools " + r.stderr.strip())
        calls = open(log).read() if os.path.exists(log) else ""
        print("     " + calls.replace("\n", "\n     ").rstrip())
        check("[--topic] [sheaf.map] [--partitions] [12]" in calls, "compose: sheaf.map with 12 partitions")
        check("[retention.ms=2592000000]" in calls, "compose: sheaf.map retention.ms 30 days")
        check("[sheaf.dlq]" in calls and "[sheaf.results]" in calls, "compose: dlq and results topics")

    if sheaf:
        conf = os.path.join(HERE, "compose", "sheaf.conf")
        envs = {k: v for k, v in services["worker"]["environment"].items()}
        fake = {"LLM_BASE_URL": "http://ollama:11434/v1", "LLM_MODEL": "m",
                "REDIS_PASSWORD": "pw", "LLM_API_KEY": ""}
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("SHEAF_")}
        for k, v in envs.items():
            run_env[k] = compose_unescape(str(v), fake)
        run_env["SHEAF_CONFIG"] = conf
        r = subprocess.run([sheaf, "config"], env=run_env, capture_output=True, text=True)
        ok = r.returncode == 0 and "brokers = \"kafka:9092\"" in r.stdout and r.stderr == ""
        check(ok, "compose: `sheaf config` loads compose/sheaf.conf with the compose environment "
              + r.stderr.strip())


REPO = os.path.dirname(HERE)
# Settings of the broker in compose.yaml that differ from the tests' on purpose.
KAFKA_DIFFERENCES = {
    "listeners": "container listeners (INTERNAL, EXTERNAL) instead of loopback ports",
    "advertised.listeners": "container host names instead of loopback ports",
    "listener.security.protocol.map": "names the INTERNAL and EXTERNAL listeners",
    "inter.broker.listener.name": "INTERNAL (the container network) instead of PLAINTEXT",
    "controller.quorum.voters": "the container's host name instead of a loopback port",
    "log.dirs": "the kafka-data volume",
    "auto.create.topics.enable": "false: topics come only from kafka-init with their "
                                 "settings; the tests create them too (sheaf-kafka-topics) but "
                                 "allow auto-creation like the mock cluster",
}
# Must be set, to the same value, on both (a single node: replication 1).
KAFKA_ESSENTIAL = ["process.roles", "node.id", "controller.listener.names",
                   "offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                   "transaction.state.log.min.isr", "group.initial.rebalance.delay.ms"]
# Environment variables of the apache/kafka image that are not broker properties.
KAFKA_ENV_NOT_PROPS = {"KAFKA_HEAP_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_OPTS",
                       "KAFKA_LOG4J_OPTS", "KAFKA_GC_LOG_OPTS"}


def kraft_test_properties():
    """The server.properties dev/kafka-kraft.sh writes for a single node, without the
    settings whose values are computed per run (ports, paths)."""
    text = open(os.path.join(REPO, "dev", "kafka-kraft.sh")).read()
    m = re.search(r'cat >"\$nd/server.properties" <<EOF\n(.*?)\nEOF', text, re.S)
    if not m:
        return None
    props = {}
    for line in m.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.replace("$rf", "1").replace("$isr", "1").replace("$n", "1")
        if "$" not in v:
            props[k] = v
    return props


def image_env_to_prop(name):
    """apache/kafka's mapping: KAFKA_FOO_BAR -> foo.bar, __ -> _, ___ -> -."""
    s = name[len("KAFKA_"):].lower()
    return s.replace("___", "\0").replace("__", "\1").replace("_", ".") \
        .replace("\0", "-").replace("\1", "_")


def check_kafka_agrees():
    doc = load_all(os.path.join(HERE, "compose.yaml"))[0]
    services = doc.get("services", {})
    pom = open(os.path.join(REPO, "dev", "kafka", "pom.xml")).read()
    m = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    version = m.group(1) if m else None
    check(version is not None, "kafka: dev/kafka/pom.xml names kafka.version")
    for name in ("kafka", "kafka-init"):
        image = services.get(name, {}).get("image", "")
        check(image == f"apache/kafka:{version}",
              f"kafka: compose {name} image {image} is apache/kafka:{version} (dev/kafka/pom.xml)")
    tests = kraft_test_properties()
    if not check(bool(tests), "kafka: dev/kafka-kraft.sh's server.properties found"):
        return
    env = services.get("kafka", {}).get("environment", {})
    deploy = {image_env_to_prop(k): str(v) for k, v in env.items()
              if k.startswith("KAFKA_") and k not in KAFKA_ENV_NOT_PROPS}
    for k in KAFKA_ESSENTIAL:
        check(k in tests and k in deploy and tests[k] == deploy[k],
              f"kafka: {k} = {deploy.get(k)} in compose, {tests.get(k)} in the tests")
    for k, v in sorted(deploy.items()):
        if k in KAFKA_DIFFERENCES or k in KAFKA_ESSENTIAL:
            continue
        if k in tests:
            check(tests[k] == v, f"kafka: {k} = {v} in compose, {tests[k]} in the tests")
        else:
            check(False, f"kafka: {k} is set in compose but not by dev/kafka-kraft.sh: "
                  "set it in both, or list it in KAFKA_DIFFERENCES with the reason")
    for k in sorted(KAFKA_DIFFERENCES):
        check(k in deploy, f"kafka: {k} differs on purpose: {KAFKA_DIFFERENCES[k]}")
    src = open(os.path.join(REPO, "dev", "kafka_topics.c")).read()
    m = re.search(r'#define MAX_MESSAGE_BYTES "(\d+)"', src)
    check(m is not None, "kafka: dev/kafka_topics.c defines MAX_MESSAGE_BYTES")
    if m:
        script = compose_unescape(services["kafka-init"]["command"][0], {})
        # The text from each topic's create to the next one's.
        blocks = {b.split('"', 1)[0]: b for b in script.split('create "$PREFIX.')[1:]}
        for topic in ("map", "dlq", "results"):
            check(f"max.message.bytes={m.group(1)}" in blocks.get(topic, ""),
                  f"kafka: kafka-init gives <prefix>.{topic} max.message.bytes={m.group(1)} "
                  "as the tests' topics have")


def check_dockerfile():
    repo = os.path.dirname(HERE)
    text = open(os.path.join(HERE, "Dockerfile")).read()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages = [l for l in lines if l.startswith("FROM ")]
    check(len(stages) == 2 and "debian:12 " in stages[0] and "debian:12-slim" in stages[1],
          "Dockerfile: two stages, debian:12 build and debian:12-slim runtime")
    for l in lines:
        if l.startswith("COPY ") and "--from=" not in l:
            srcs = l.split()[1:-1]
            for src in srcs:
                check(os.path.exists(os.path.join(repo, src)), f"Dockerfile: COPY source {src} exists")
                check(not src.startswith(("build", ".sheaf")), f"Dockerfile: COPY {src} is not a build dir")
    runtime = text[text.index("AS runtime"):]
    check("ENTRYPOINT" not in re.sub(r"#.*", "", runtime), "Dockerfile: runtime has no ENTRYPOINT")
    check(re.search(r"^USER 10001", runtime, re.M) is not None, "Dockerfile: runtime runs as uid 10001")
    check('CMD ["sheaf-worker"]' in runtime, "Dockerfile: CMD sheaf-worker")
    for pkg in ("librdkafka1", "libcurl4", "libmsgpackc2", "libhiredis0.14", "libjansson4",
                "libssl3", "libevent-core-2.1-7", "libevent-extra-2.1-7", "poppler-utils",
                "ca-certificates"):
        check(re.search(r"\b" + re.escape(pkg) + r"\b", runtime) is not None, f"Dockerfile: runtime installs {pkg}")


def check_k8s(sheaf):
    kdir = os.path.join(HERE, "k8s")
    kust = load_all(os.path.join(kdir, "kustomization.yaml"))[0]
    listed = kust.get("resources", [])
    for res in listed:
        check(os.path.isfile(os.path.join(kdir, res)), f"k8s: kustomization resource {res} exists")
    for name in sorted(os.listdir(kdir)):
        if name.endswith(".yaml") and name != "kustomization.yaml":
            check(name in listed, f"k8s: {name} is listed in kustomization.yaml")
    objs = {}
    for res in listed:
        for d in load_all(os.path.join(kdir, res)):
            objs[(d["kind"], d["metadata"]["name"])] = d
    cm = objs[("ConfigMap", "sheaf-config")]
    conf_text = cm["data"]["sheaf.conf"]
    secret = objs[("Secret", "sheaf-secrets")]
    for key, val in secret.get("stringData", {}).items():
        check(val.startswith("REPLACE_WITH_"), f"k8s: Secret {key} is a placeholder")
    drain_ms = int(conf_value(conf_text, "worker.drain_ms") or 10000)
    for dep in ("sheaf-worker", "sheaf-reducer"):
        d = objs[("Deployment", dep)]
        spec = d["spec"]["template"]["spec"]
        check(spec.get("enableServiceLinks") is False, f"k8s: {dep} enableServiceLinks false")
        check(d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items(),
              f"k8s: {dep} selector matches its pod labels")
        for v in spec["volumes"]:
            if "configMap" in v:
                check(("ConfigMap", v["configMap"]["name"]) in objs, f"k8s: {dep} ConfigMap {v['configMap']['name']} defined")
            if "secret" in v:
                check(("Secret", v["secret"]["secretName"]) in objs, f"k8s: {dep} Secret {v['secret']['secretName']} defined")
        c = spec["containers"][0]
        check("resources" in c and "limits" in c["resources"], f"k8s: {dep} has resources")
        for e in c.get("env", []):
            check(e["name"].startswith("SHEAF_"), f"k8s: {dep} env {e['name']}")
    worker = objs[("Deployment", "sheaf-worker")]
    check("replicas" not in worker["spec"], "k8s: worker Deployment leaves replicas to KEDA")
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    check(grace * 1000 > drain_ms + 10000, f"k8s: worker grace {grace}s > worker.drain_ms {drain_ms}ms + 10 s flush")
    so = objs[("ScaledObject", "sheaf-worker")]
    trig = so["spec"]["triggers"][0]
    md = trig["metadata"]
    check(trig["type"] == "kafka", "k8s: KEDA trigger type kafka")
    check(so["spec"]["scaleTargetRef"]["name"] == "sheaf-worker", "k8s: KEDA scales sheaf-worker")
    check(md["bootstrapServers"] == conf_value(conf_text, "brokers"), "k8s: KEDA bootstrapServers = brokers")
    check(md["consumerGroup"] == conf_value(conf_text, "worker.group"), "k8s: KEDA consumerGroup = worker.group")
    check(md["topic"] == (conf_value(conf_text, "topic.prefix") or "sheaf") + ".map", "k8s: KEDA topic = <prefix>.map")
    check(all(k in md for k in ("lagThreshold", "offsetResetPolicy")), "k8s: KEDA lagThreshold, offsetResetPolicy")
    check(so["spec"]["maxReplicaCount"] <= 12, "k8s: KEDA maxReplicaCount <= 12 partitions")

    if sheaf:
        with tempfile.TemporaryDirectory() as tmp:
            cpath = os.path.join(tmp, "sheaf.conf")
            open(cpath, "w").write(conf_text)
            for f in ("llm-api-key", "redis-password"):
                open(os.path.join(tmp, f), "w").write("placeholder\n")
            run_env = {k: v for k, v in os.environ.items() if not k.startswith("SHEAF_")}
            run_env.update(SHEAF_CONFIG=cpath, SHEAF_KAFKA_SASL_PASSWORD="x")
            r = subprocess.run([sheaf, "config",
                                "-X", "redis.password_file=" + os.path.join(tmp, "redis-password"),
                                "-X", "llm.api_key_file=" + os.path.join(tmp, "llm-api-key")],
                               env=run_env, capture_output=True, text=True)
            ok = (r.returncode == 0 and r.stderr == "" and "# kafka.sasl.password = (set)" in r.stdout
                  and "# llm.api_key = (set)" in r.stdout)
            check(ok, "k8s: `sheaf config` loads the ConfigMap's sheaf.conf, secret files and "
                  "SHEAF_KAFKA_SASL_PASSWORD " + r.stderr.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sheaf", help="a built sheaf CLI, e.g. build/cli/sheaf")
    args = ap.parse_args()
    for f in yaml_files():
        try:
            load_all(f)
            check(True, "yaml parses: " + os.path.relpath(f, HERE))
        except yaml.YAMLError as e:
            check(False, f"yaml parses: {os.path.relpath(f, HERE)}: {e}")
    check_compose(args.sheaf)
    check_kafka_agrees()
    check_dockerfile()
    check_k8s(args.sheaf)
    print(f"\n{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
