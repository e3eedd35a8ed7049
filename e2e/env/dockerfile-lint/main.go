// Command dockerfile-lint runs BuildKit's Dockerfile checks (the ones
// `docker build --check` runs) without a Docker engine or a registry: base
// images resolve to an empty image config, so every rule but those that
// need the base image's contents applies. It prints each finding and exits
// 1 when there is any, 2 when the Dockerfile cannot be read or parsed.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	digest "github.com/opencontainers/go-digest"
)

// offlineImages answers every base image with an empty linux/amd64 config.
type offlineImages struct{}

func (offlineImages) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	return ref, "", []byte(`{"architecture":"amd64","os":"linux","config":{}}`), nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile-lint DOCKERFILE")
		os.Exit(2)
	}
	path := os.Args[1]
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx := context.Background()
	source := llb.Local("dockerfile")
	sourceMap := llb.NewSourceMap(&source, path, "Dockerfile", data)
	if sourceMap.Definition, err = source.Marshal(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	results, err := dockerfile2llb.DockerfileLint(ctx, data, dockerfile2llb.ConvertOpt{
		SourceMap:    sourceMap,
		MetaResolver: offlineImages{},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if results.Error != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", path, results.Error.Message)
		os.Exit(2)
	}
	for _, warning := range results.Warnings {
		line := int32(0)
		if len(warning.Location.Ranges) > 0 {
			line = warning.Location.Ranges[0].Start.Line
		}
		fmt.Printf("%s:%d: %s: %s (%s)\n", path, line, warning.RuleName, warning.Detail, warning.URL)
	}
	if len(results.Warnings) > 0 {
		os.Exit(1)
	}
	fmt.Printf("%s: no findings\n", path)
}
