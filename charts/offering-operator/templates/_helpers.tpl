{{/* The chart's name, or nameOverride. */}}
{{- define "offering-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The objects' base name, at most 63 characters: fullnameOverride, or
the release name with the chart's name unless it already contains it. */}}
{{- define "offering-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "offering-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries: the chart's own, then commonLabels. */}}
{{- define "offering-operator.labels" -}}
{{ include "offering-operator.ownLabels" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The chart's own labels, which commonLabels cannot set (validate.tpl). */}}
{{- define "offering-operator.ownLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "offering-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: offering-operator
{{- end -}}

{{/* Labels selecting the operator's pods. */}}
{{- define "offering-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "offering-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's ServiceAccount: the chart's (serviceAccount.create), or
an existing one, which must be named (validate.yaml). */}}
{{- define "offering-operator.serviceAccountName" -}}
{{- default (include "offering-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* An image reference from a dict of repository, tag and digest:
repository@digest when a digest is given, else repository:tag. */}}
{{- define "offering-operator.imageReference" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* The operator's image. */}}
{{- define "offering-operator.image" -}}
{{- include "offering-operator.imageReference" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) -}}
{{- end -}}

{{/* The agents' default image: agentImage when it names a tag or a digest,
else the operator's image. */}}
{{- define "offering-operator.agentImage" -}}
{{- $agent := .Values.agentImage -}}
{{- if or $agent.tag $agent.digest -}}
{{- include "offering-operator.imageReference" (dict "repository" (default .Values.image.repository $agent.repository) "tag" $agent.tag "digest" $agent.digest) -}}
{{- else -}}
{{- include "offering-operator.image" . -}}
{{- end -}}
{{- end -}}

{{/*
Rules over the objects an offering has in its own namespace: its kcp
kubeconfig Secret (read, and Secrets watched so that a created or rotated
one is acted on at once), the agent's Secret, ServiceAccount, Service,
Deployment, Role and RoleBinding (write), the agent's Lease (read, for the
offering's status), and the offerings themselves.
Cluster-wide without watchNamespace, a Role in that namespace with it.
*/}}
{{- define "offering-operator.namespacedRules" -}}
- apiGroups: [offering.syncagent.dev]
  resources: [publishedofferings]
  verbs: [get, list, watch, update, patch]
- apiGroups: [offering.syncagent.dev]
  resources: [publishedofferings/status]
  verbs: [get, update, patch]
- apiGroups: [offering.syncagent.dev]
  resources: [publishedofferings/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [secrets, serviceaccounts, services]
  verbs: [get, create, update, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, update, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, update, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles]
  verbs: [escalate, bind]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
