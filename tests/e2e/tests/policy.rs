//! Controller tenant safety (issue 8): the policy file, Secret rules and secret hygiene,
//! against the real kube-apiserver and registry.
