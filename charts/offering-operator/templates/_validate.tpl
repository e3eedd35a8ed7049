{{/*
Cross-field checks of the values, which the schema cannot express. Each
failure says which values to change; included by deployment.yaml, so an
install or upgrade with a bad combination stops before touching anything.
*/}}
{{- define "offering-operator.validate" -}}
{{- $agent := .Values.agent -}}
{{- $lifetime := include "offering-operator.seconds" $agent.tokenLifetime | atoi -}}
{{- $renewBefore := include "offering-operator.seconds" $agent.tokenRenewBefore | atoi -}}
{{- if ge $renewBefore $lifetime -}}
{{- fail (printf "agent.tokenRenewBefore (%s) must be shorter than agent.tokenLifetime (%s): a token would be due for renewal as soon as it is minted; lower agent.tokenRenewBefore or raise agent.tokenLifetime" $agent.tokenRenewBefore $agent.tokenLifetime) -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection) -}}
{{- fail (printf "replicaCount=%v needs leaderElection=true: without it every replica reconciles the same offerings; set leaderElection=true or replicaCount=1" .Values.replicaCount) -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.create=false needs serviceAccount.name: the existing ServiceAccount in the release namespace the operator runs as (the chart binds its roles to it)" -}}
{{- end -}}
{{- $agentImage := .Values.agentImage -}}
{{- if and $agentImage.repository (not (or $agentImage.tag $agentImage.digest)) -}}
{{- fail (printf "agentImage.repository (%s) needs agentImage.tag or agentImage.digest: without either the agents run the operator's image (image.*); set one, or leave agentImage.repository empty" $agentImage.repository) -}}
{{- end -}}
{{- $own := include "offering-operator.ownLabels" . | fromYaml -}}
{{- range $key, $value := .Values.commonLabels -}}
{{- if hasKey $own $key -}}
{{- fail (printf "commonLabels cannot set %s: the chart sets it on every object (selectors rely on it); use another key" $key) -}}
{{- end -}}
{{- end -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if and $pdb.enabled (ne (toString $pdb.minAvailable) "") (ne (toString $pdb.maxUnavailable) "") -}}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" -}}
{{- end -}}
{{- end -}}

{{/* A duration such as 90s, 30m, 8h or 1h30m, in seconds. */}}
{{- define "offering-operator.seconds" -}}
{{- $units := dict "s" 1 "m" 60 "h" 3600 -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+[smh]" (toString .) -1 -}}
{{- $digits := trunc (sub (len .) 1 | int) . -}}
{{- $unit := substr (sub (len .) 1 | int) (len .) . -}}
{{- $total = add $total (mul (atoi $digits) (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}
