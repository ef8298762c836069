package cli

import (
	"fmt"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"

	"github.com/baton-dev/baton/internal/config"
)

func newCheckCmd() *cobra.Command {
	var flags config.Settings
	var configPath string
	c := &cobra.Command{
		Use:   "check [--config FILE] [flags] [-- COMMAND [ARGS...]]",
		Short: "Validate a configuration and print the effective settings",
		Long: `Read the configuration exactly as baton run would (the TOML file, then the
flags given on the command line), validate every value, and print the
effective settings as TOML. Nothing is bound or started.

An error names the file, the line and the key (or the flag), what is wrong
and what is allowed; check exits 2 then.`,
		Example: `  baton check --config /etc/baton/web.toml
  baton check --config web.toml --workers 8`,
		RunE: func(c *cobra.Command, args []string) error {
			r, err := load(configPath, &flags, c.Flags(), args)
			if err != nil {
				return err
			}
			out := c.OutOrStdout()
			src := "flags only"
			if configPath != "" {
				src = configPath + ", then flags"
			}
			fmt.Fprintf(out, "# effective configuration (%s): valid\n", src)
			fmt.Fprintf(out, "# control socket: %s\n# command: %s\n", r.ControlPath, r.Supervisor.Path)
			for _, s := range r.Specs {
				fmt.Fprintf(out, "# listener %s\n", s.String())
			}
			eff := r.Settings
			eff.Listen, eff.Listeners = nil, nil
			for _, s := range r.Specs {
				eff.Listen = append(eff.Listen, s.String())
			}
			if eff.Control == "" {
				eff.Control = r.ControlPath
			}
			return toml.NewEncoder(out).Encode(eff)
		},
	}
	fl := c.Flags()
	fl.SetInterspersed(false)
	fl.StringVarP(&configPath, "config", "c", "", "the TOML file to check")
	config.Register(fl, &flags)
	return c
}
