"""Beyond one machine: a Ray cluster run and watched by lf, and a project's model entries served on it by Ray Serve.

What runs where:
- every node: a Ray node (`ray start --block`, an lf daemon: lf cluster start / join) from the cluster's own env
  (lf.cluster.env); Ray is never a dependency of lf itself, and lf never imports it (lf.cluster.bridge);
- wherever Ray Serve places them: the replicas of each entry's application (lf.cluster.replica), each running
  the entry's engine on its node with lf's own launch plan, watched by a small process that stops the engine if
  the replica is killed (lf.cluster.watchdog);
- the head node: Ray Serve's controller and its HTTP proxy, the models' endpoint.

The function API: lf.cluster.deploy.deploy / undeploy, lf.cluster.status.status, lf.cluster.nodes.start_head /
join / stop / connect.
"""
