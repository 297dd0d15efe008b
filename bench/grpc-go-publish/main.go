// grpc-go-publish: NodePublishVolume and NodeUnpublishVolume latency of a CSI node
// plugin as the kubelet's gRPC stack (grpc-go) sees it. One client, calls in sequence,
// inline (ephemeral) volumes as a pod's csi volume asks for them.
//
//	grpc-go-publish -endpoint /path/to/csi.sock -dir /targets -n 1000 [-warmup 20] [-attr k=v]...
//
// Prints one JSON object: p50 and p99 of each call in milliseconds.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

type attrs map[string]string

func (a attrs) String() string { return fmt.Sprint(map[string]string(a)) }

func (a attrs) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("%q: want KEY=VALUE", s)
	}
	a[k] = v
	return nil
}

func percentile(d []time.Duration, p float64) float64 {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s))*p+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(s) {
		i = len(s) - 1
	}
	return float64(s[i].Microseconds()) / 1000
}

func main() {
	endpoint := flag.String("endpoint", "", "the plugin's Unix socket")
	dir := flag.String("dir", "", "directory for the target paths")
	n := flag.Int("n", 1000, "volumes published and unpublished (timed)")
	warmup := flag.Int("warmup", 20, "volumes published and unpublished first (not timed)")
	volumeContext := attrs{}
	flag.Var(volumeContext, "attr", "volume context KEY=VALUE (repeatable)")
	flag.Parse()
	if *endpoint == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "grpc-go-publish: -endpoint and -dir are required")
		os.Exit(2)
	}
	conn, err := grpc.NewClient("unix://"+*endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpc-go-publish:", err)
		os.Exit(1)
	}
	defer conn.Close()
	node := csi.NewNodeClient(conn)
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	run := func(first, count int, publish, unpublish *[]time.Duration) {
		targets := make([]string, count)
		for i := range targets {
			// As the kubelet does: the pod's volume directory exists, its mount point is
			// the plugin's to make.
			parent := filepath.Join(*dir, fmt.Sprint(first+i))
			if err := os.MkdirAll(parent, 0o750); err != nil {
				fmt.Fprintln(os.Stderr, "grpc-go-publish:", err)
				os.Exit(1)
			}
			targets[i] = filepath.Join(parent, "mount")
		}
		for i, t := range targets {
			start := time.Now()
			_, err := node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
				VolumeId:         fmt.Sprintf("csi-bench-%d", first+i),
				TargetPath:       t,
				VolumeCapability: capability,
				VolumeContext:    volumeContext,
			})
			if err != nil {
				fmt.Fprintln(os.Stderr, "grpc-go-publish: NodePublishVolume:", err)
				os.Exit(1)
			}
			if publish != nil {
				*publish = append(*publish, time.Since(start))
			}
		}
		for i, t := range targets {
			start := time.Now()
			_, err := node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{
				VolumeId:   fmt.Sprintf("csi-bench-%d", first+i),
				TargetPath: t,
			})
			if err != nil {
				fmt.Fprintln(os.Stderr, "grpc-go-publish: NodeUnpublishVolume:", err)
				os.Exit(1)
			}
			if unpublish != nil {
				*unpublish = append(*unpublish, time.Since(start))
			}
		}
	}
	run(0, *warmup, nil, nil)
	var publish, unpublish []time.Duration
	run(*warmup, *n, &publish, &unpublish)
	out, _ := json.Marshal(map[string]float64{
		"publish_p50_ms":   percentile(publish, 0.5),
		"publish_p99_ms":   percentile(publish, 0.99),
		"unpublish_p50_ms": percentile(unpublish, 0.5),
		"unpublish_p99_ms": percentile(unpublish, 0.99),
	})
	fmt.Println(string(out))
}
