// Package cliconfig is the yunchi CLI's config file: the controllers and
// the token `yunchi login` (or `yunchid dev`) stored, so that later
// commands need no flags.
package cliconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/yunchi/yunchi/internal/pki"
)

// Config is what `yunchi login` stores. Flags and YUNCHI_ADDR /
// YUNCHI_TOKEN win over it.
type Config struct {
	Addr  string `json:"addr,omitempty"`
	Token string `json:"token,omitempty"`
	User  string `json:"user,omitempty"`
}

// Path is $YUNCHI_CONFIG, else $XDG_CONFIG_HOME/yunchi/config.json,
// else ~/.config/yunchi/config.json.
func Path() (string, error) {
	if p := os.Getenv("YUNCHI_CONFIG"); p != "" {
		return p, nil
	}
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find the config file: %w (set YUNCHI_CONFIG)", err)
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "yunchi", "config.json"), nil
}

// Load reads the config; a missing file is an empty config.
func Load() (Config, string, error) {
	var c Config
	path, err := Path()
	if err != nil {
		return c, "", err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, path, nil
	}
	if err != nil {
		return c, path, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, path, fmt.Errorf("%s is not valid: %v (remove it and log in again)", path, err)
	}
	return c, path, nil
}

// Save writes the config readable by its owner only (it holds a
// token), atomically.
func Save(path string, c Config) error {
	b, _ := json.MarshalIndent(c, "", "  ")
	if err := pki.WriteFiles(filepath.Dir(path), map[string][]byte{filepath.Base(path): append(b, '\n')}); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// SaveLogin stores addr and token as `yunchi login` does (also used by
// `yunchid dev`, which logs its user in as the sysadmin); it returns the
// file's path.
func SaveLogin(addr, token, user string) (string, error) {
	path, err := Path()
	if err != nil {
		return "", err
	}
	return path, Save(path, Config{Addr: addr, Token: token, User: user})
}
