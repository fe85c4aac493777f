"""Checks that the NetworkPolicy really guards the DaemonSet, which a schema can't say:
- it is in the DaemonSet's namespace and selects the DaemonSet's pods;
- the pods are on the pod network (no hostNetwork: most CNIs don't enforce
  NetworkPolicy on host-network pods, and the policy would silently do nothing);
- it governs Ingress (and Egress), with every ingress rule naming its sources (a rule
  without `from` admits everyone) and each source peer requiring BOTH a
  namespaceSelector and a podSelector in one item (two items would admit either), or
  an ipBlock;
- the only port admitted is the container's metrics port, over TCP;
- no egress is allowed.
Run with the venv's python (PyYAML comes with kubernetes-validate):
    target/tools/venv/bin/python deploy/kubernetes/check_networkpolicy.py \
        deploy/kubernetes/networkpolicy.yaml deploy/kubernetes/daemonset.yaml
Prints one INFO line on success, one ERROR line per problem otherwise (exit 1)."""
import sys

import yaml


def load(path, kind):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == kind]
    if len(docs) != 1:
        sys.exit("ERROR %s: expected one %s, found %d" % (path, kind, len(docs)))
    return docs[0]


def problems(policy, ds):
    out = []
    ns = policy["metadata"].get("namespace")
    if ns != ds["metadata"].get("namespace"):
        out.append("namespace %r is not the DaemonSet's %r" % (ns, ds["metadata"].get("namespace")))
    pod = ds["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    want = policy["spec"].get("podSelector", {}).get("matchLabels", {})
    if not want:
        out.append("podSelector is empty: it would select every pod in the namespace")
    elif any(labels.get(k) != v for k, v in want.items()):
        out.append("podSelector %r does not select the DaemonSet's pods %r" % (want, labels))
    if pod["spec"].get("hostNetwork"):
        out.append("the DaemonSet uses hostNetwork: most CNIs do not enforce NetworkPolicy "
                   "on host-network pods; guard the port on the host instead (docs/DEPLOY.md)")
    types = policy["spec"].get("policyTypes", [])
    for t in ("Ingress", "Egress"):
        if t not in types:
            out.append("policyTypes lacks %s" % t)
    ports = [(p.get("name"), p["containerPort"], p.get("protocol", "TCP"))
             for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    metrics = [p for p in ports if p[0] == "metrics"]
    if not metrics:
        out.append("the DaemonSet has no container port named metrics")
    rules = policy["spec"].get("ingress", [])
    if not rules:
        out.append("no ingress rule: nothing, Prometheus included, can reach the port")
    for i, rule in enumerate(rules):
        peers = rule.get("from")
        if not peers:
            out.append("ingress[%d] has no `from`: it admits every source" % i)
        for j, peer in enumerate(peers or []):
            if "ipBlock" in peer:
                continue
            if not peer.get("namespaceSelector") or not peer.get("podSelector"):
                out.append("ingress[%d].from[%d] needs both a non-empty namespaceSelector and "
                           "podSelector in the same item (alone, one admits a whole namespace "
                           "or any pod of the policy's own)" % (i, j))
        rule_ports = rule.get("ports")
        if not rule_ports:
            out.append("ingress[%d] has no `ports`: it admits every port" % i)
        for p in rule_ports or []:
            if p.get("protocol", "TCP") != "TCP" or "endPort" in p or not any(
                    p.get("port") in (m[0], m[1]) for m in metrics):
                out.append("ingress[%d] admits %r, not only the metrics port %r" % (i, p, metrics))
    if policy["spec"].get("egress"):
        out.append("egress rules allow traffic out; memwatch needs none")
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: check_networkpolicy.py NETWORKPOLICY.yaml DAEMONSET.yaml")
    policy = load(sys.argv[1], "NetworkPolicy")
    ds = load(sys.argv[2], "DaemonSet")
    found = problems(policy, ds)
    for p in found:
        print("ERROR %s: %s" % (sys.argv[1], p))
    if found:
        sys.exit(1)
    print("INFO %s guards the pods of %s: only its ingress peers reach port %s, no egress"
          % (sys.argv[1], sys.argv[2],
             [p.get("port") for r in policy["spec"]["ingress"] for p in r["ports"]]))


main()
