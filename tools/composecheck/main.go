// composecheck validates docker-compose.yml with compose-go, the parser Docker Compose itself uses,
// interpolating from the env files exactly as `docker compose --env-file stack.env --env-file .env.secrets`
// does. It prints the resolved services as JSON so tests can assert on them. Used where the Compose plugin
// is absent.
//
// Usage: composecheck <compose file> <env file>[,<env file>...] [profile,...]
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 3 || len(os.Args) > 4 {
		fmt.Fprintln(os.Stderr, "usage: composecheck <compose file> <env file>[,<env file>...] [profile,...]")
		os.Exit(2)
	}
	file, envFile := os.Args[1], os.Args[2]
	var profiles []string
	if len(os.Args) == 4 {
		profiles = strings.Split(os.Args[3], ",")
	}
	options, err := cli.NewProjectOptions(
		[]string{file},
		cli.WithWorkingDirectory(filepath.Dir(file)),
		cli.WithEnvFiles(strings.Split(envFile, ",")...),
		cli.WithDotEnv,
		cli.WithName("livekit-infra"),
		cli.WithProfiles(profiles),
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := json.MarshalIndent(project, "", "  ")
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "invalid compose file:", err)
	os.Exit(1)
}
