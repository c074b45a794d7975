package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/internal/cliconfig"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// loginCredentials picks the controllers and token: flags and YUNCHI_ADDR /
// YUNCHI_TOKEN first, then what `yunchi login` stored.
func loginCredentials(cCtx *cli.Context) (addr, token string, err error) {
	addr, token = cCtx.String("addr"), cCtx.String("token")
	if cCtx.IsSet("addr") && cCtx.IsSet("token") {
		return addr, token, nil
	}
	cfg, _, err := cliconfig.Load()
	if err != nil {
		return "", "", usagef("%v", err)
	}
	if !cCtx.IsSet("addr") && cfg.Addr != "" {
		addr = cfg.Addr
	}
	if !cCtx.IsSet("token") && cfg.Token != "" {
		token = cfg.Token
	}
	return addr, token, nil
}

func deptCommand() *cli.Command {
	return &cli.Command{
		Name:    "dept",
		Aliases: []string{"department"},
		Usage:   "departments: who owns projects and their VMs (security administrator)",
		Subcommands: []*cli.Command{
			{Name: "create", Usage: "create a department", ArgsUsage: "NAME",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "description", Usage: "one line of text"}},
				Action: withSession(deptCreate)},
			{Name: "list", Aliases: []string{"ls"}, Usage: "list the departments you can see", Action: withSession(deptList)},
			{Name: "show", Aliases: []string{"get"}, Usage: "show one department", ArgsUsage: "NAME", Action: withSession(deptShow)},
			{Name: "delete", Aliases: []string{"rm"}, Usage: "delete a department (refused while it has projects or users)", ArgsUsage: "NAME", Action: withSession(deptDelete)},
		},
	}
}

func deptCreate(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.CreateDepartmentRequest{Name: args[0], Description: cCtx.String("description")}
	d, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Department, error) {
		return yunchiv1.NewDepartmentServiceClient(cc).CreateDepartment(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(d, s.out.deptDetail(d))
}

func deptList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListDepartmentsResponse, error) {
		return yunchiv1.NewDepartmentServiceClient(cc).ListDepartments(ctx, &yunchiv1.ListDepartmentsRequest{})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tPROJECTS\tUSERS\tDESCRIPTION")
		for _, d := range resp.GetDepartments() {
			fmt.Fprintf(w, "%s\t%d\t%d\t%s\n", d.GetName(), len(d.GetProjects()), d.GetUsers(), dash(d.GetDescription()))
		}
	})
}

func deptShow(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	d, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Department, error) {
		return yunchiv1.NewDepartmentServiceClient(cc).GetDepartment(ctx, &yunchiv1.GetDepartmentRequest{Name: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(d, s.out.deptDetail(d))
}

func deptDelete(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DeleteDepartmentResponse, error) {
		return yunchiv1.NewDepartmentServiceClient(cc).DeleteDepartment(ctx, &yunchiv1.DeleteDepartmentRequest{Name: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) { fmt.Fprintf(w, "department %s deleted\n", args[0]) })
}

func (p *printer) deptDetail(d *yunchiv1.Department) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Name", d.GetName())
		kv(w, "Description", d.GetDescription())
		kv(w, "Projects", strings.Join(d.GetProjects(), ", "))
		kv(w, "Users", fmt.Sprint(d.GetUsers()))
		kv(w, "Created", p.timestamp(d.GetCreatedAt()))
	}
}

func projectCommand() *cli.Command {
	return &cli.Command{
		Name:  "project",
		Usage: "projects (application systems) of a department: they hold VMs and placement groups",
		Subcommands: []*cli.Command{
			{Name: "create", Usage: "create a project in a department", ArgsUsage: "NAME",
				UsageText: "yunchi project create NAME --dept D [--description TEXT]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "dept", Usage: "its department (a department admin: its own)"},
					&cli.StringFlag{Name: "description", Usage: "one line of text"},
				},
				Action: withSession(projectCreate)},
			{Name: "list", Aliases: []string{"ls"}, Usage: "list the projects you can see",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "dept", Usage: "only this department's"}},
				Action: withSession(projectList)},
			{Name: "show", Aliases: []string{"get"}, Usage: "show one project", ArgsUsage: "NAME", Action: withSession(projectShow)},
			{Name: "delete", Aliases: []string{"rm"}, Usage: "delete a project (refused while it has VMs or groups)", ArgsUsage: "NAME", Action: withSession(projectDelete)},
			projectProtectCommand(),
		},
	}
}

func projectCreate(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.CreateProjectRequest{Name: args[0], Department: cCtx.String("dept"), Description: cCtx.String("description")}
	p, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Project, error) {
		return yunchiv1.NewProjectServiceClient(cc).CreateProject(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(p, s.out.projectDetail(p))
}

func projectList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListProjectsResponse, error) {
		return yunchiv1.NewProjectServiceClient(cc).ListProjects(ctx, &yunchiv1.ListProjectsRequest{Department: cCtx.String("dept")})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tDEPARTMENT\tVMS\tGROUPS\tDESCRIPTION")
		for _, p := range resp.GetProjects() {
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\n", p.GetName(), p.GetDepartment(), p.GetVms(), p.GetGroups(), dash(p.GetDescription()))
		}
	})
}

func projectShow(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	p, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Project, error) {
		return yunchiv1.NewProjectServiceClient(cc).GetProject(ctx, &yunchiv1.GetProjectRequest{Name: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(p, s.out.projectDetail(p))
}

func projectDelete(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DeleteProjectResponse, error) {
		return yunchiv1.NewProjectServiceClient(cc).DeleteProject(ctx, &yunchiv1.DeleteProjectRequest{Name: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) { fmt.Fprintf(w, "project %s deleted\n", args[0]) })
}

func (p *printer) projectDetail(pr *yunchiv1.Project) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Name", pr.GetName())
		kv(w, "Department", pr.GetDepartment())
		kv(w, "Description", pr.GetDescription())
		kv(w, "VMs", fmt.Sprint(pr.GetVms()))
		kv(w, "Groups", fmt.Sprint(pr.GetGroups()))
		kv(w, "Created", p.timestamp(pr.GetCreatedAt()))
	}
}

func userCommand() *cli.Command {
	return &cli.Command{
		Name:  "user",
		Usage: "user accounts and their roles (security administrator; a department admin: its members)",
		Subcommands: []*cli.Command{
			{Name: "create", Usage: "create a user", ArgsUsage: "NAME",
				UsageText: "yunchi user create NAME --role ROLE [--dept D] [--project P]...\n\n" +
					"Roles: sysadmin, secadmin, auditor, operator (cluster-wide, no --dept);\n" +
					"dept-admin, member, viewer (need --dept; members and viewers act in their --project only).\n" +
					"Then give the user a token: yunchi token create --user NAME",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "role", Usage: "sysadmin, secadmin, auditor, operator, dept-admin, member or viewer"},
					&cli.StringFlag{Name: "dept", Usage: "department (department roles)"},
					&cli.StringSliceFlag{Name: "project", Usage: "project the user belongs to (repeatable)"},
					&cli.StringFlag{Name: "display-name", Usage: "the person's name"},
				},
				Action: withSession(userCreate)},
			{Name: "list", Aliases: []string{"ls"}, Usage: "list users",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "dept", Usage: "only this department's"}},
				Action: withSession(userList)},
			{Name: "show", Aliases: []string{"get"}, Usage: "show one user", ArgsUsage: "NAME", Action: withSession(userShow)},
			{Name: "add-project", Usage: "add a user to projects", ArgsUsage: "NAME PROJECT...", Action: withSession(userProjects(true))},
			{Name: "remove-project", Usage: "remove a user from projects", ArgsUsage: "NAME PROJECT...", Action: withSession(userProjects(false))},
			{Name: "unlock", Usage: "lift the lock after failed logins", ArgsUsage: "NAME", Action: withSession(userUnlock)},
			{Name: "delete", Aliases: []string{"rm"}, Usage: "delete a user (its tokens stop working at once)", ArgsUsage: "NAME", Action: withSession(userDelete)},
		},
	}
}

func userCreate(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	if cCtx.String("role") == "" {
		return usagef("user create: --role is required: sysadmin, secadmin, auditor, operator, dept-admin, member or viewer")
	}
	req := &yunchiv1.CreateUserRequest{Name: args[0], Role: cCtx.String("role"), Department: cCtx.String("dept"),
		Projects: cCtx.StringSlice("project"), DisplayName: cCtx.String("display-name")}
	u, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.User, error) {
		return yunchiv1.NewUserServiceClient(cc).CreateUser(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(u, s.out.userDetail(u))
}

func userList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListUsersResponse, error) {
		return yunchiv1.NewUserServiceClient(cc).ListUsers(ctx, &yunchiv1.ListUsersRequest{Department: cCtx.String("dept")})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tROLE\tDEPARTMENT\tPROJECTS\tLOCKED")
		for _, u := range resp.GetUsers() {
			locked := "-"
			if u.GetLockedUntil() != nil {
				locked = "until " + s.out.timestamp(u.GetLockedUntil())
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", u.GetName(), u.GetRoleName(), dash(u.GetDepartment()), dash(strings.Join(u.GetProjects(), ",")), locked)
		}
	})
}

func userShow(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	u, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.User, error) {
		return yunchiv1.NewUserServiceClient(cc).GetUser(ctx, &yunchiv1.GetUserRequest{Name: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(u, s.out.userDetail(u))
}

func userProjects(add bool) func(cCtx *cli.Context, s *session) error {
	return func(cCtx *cli.Context, s *session) error {
		args := cCtx.Args().Slice()
		if len(args) < 2 {
			return usagef("%s: give NAME and at least one PROJECT", commandPath(cCtx))
		}
		req := &yunchiv1.UpdateUserRequest{Name: args[0]}
		if add {
			req.AddProjects = args[1:]
		} else {
			req.RemoveProjects = args[1:]
		}
		u, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.User, error) {
			return yunchiv1.NewUserServiceClient(cc).UpdateUser(ctx, req)
		})
		if err != nil {
			return err
		}
		return s.out.print(u, s.out.userDetail(u))
	}
}

func userUnlock(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	u, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.User, error) {
		return yunchiv1.NewUserServiceClient(cc).UpdateUser(ctx, &yunchiv1.UpdateUserRequest{Name: args[0], Unlock: true})
	})
	if err != nil {
		return err
	}
	return s.out.print(u, s.out.userDetail(u))
}

func userDelete(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DeleteUserResponse, error) {
		return yunchiv1.NewUserServiceClient(cc).DeleteUser(ctx, &yunchiv1.DeleteUserRequest{Name: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) { fmt.Fprintf(w, "user %s deleted; its tokens no longer work\n", args[0]) })
}

func (p *printer) userDetail(u *yunchiv1.User) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Name", u.GetName())
		kv(w, "Role", u.GetRoleName())
		kv(w, "Department", u.GetDepartment())
		kv(w, "Projects", strings.Join(u.GetProjects(), ", "))
		kv(w, "Display name", u.GetDisplayName())
		if u.GetLockedUntil() != nil {
			kv(w, "Locked until", p.timestamp(u.GetLockedUntil()))
		}
		kv(w, "Created", p.timestamp(u.GetCreatedAt()))
	}
}

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "API tokens (security administrator): shown once when made, revocable at once",
		Subcommands: []*cli.Command{
			{Name: "create", Usage: "make a token for a user and print it (once)",
				UsageText: "yunchi token create --user NAME [--ttl 30d] [--description TEXT]\n   yunchi token create --host HOST-ID [--ttl 0]    (an agent's token, for clusters without TLS)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "user", Usage: "the user it authenticates"},
					&cli.StringFlag{Name: "host", Usage: "the host whose agent it authenticates (instead of --user)"},
					&cli.StringFlag{Name: "ttl", Usage: "lifetime: 30d, 12h, or 0 (never expires)", Value: "90d"},
					&cli.StringFlag{Name: "description", Usage: "what it is for"},
				},
				Action: withSession(tokenCreate)},
			{Name: "list", Aliases: []string{"ls"}, Usage: "list tokens (ids, never secrets)",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "user", Usage: "only this user's"}},
				Action: withSession(tokenList)},
			{Name: "revoke", Usage: "revoke a token: it stops working on every controller at once", ArgsUsage: "ID", Action: withSession(tokenRevoke)},
			{Name: "current", Usage: "print the token this CLI sends (--token, YUNCHI_TOKEN, or the one yunchi login stored), for scripts: TOKEN=$(yunchi token current)",
				Action: tokenCurrent},
		},
	}
}

func tokenCreate(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	if (cCtx.String("user") == "") == (cCtx.String("host") == "") {
		return usagef("token create: give --user NAME or --host HOST-ID")
	}
	req := &yunchiv1.CreateTokenRequest{User: cCtx.String("user"), HostId: cCtx.String("host"), Ttl: cCtx.String("ttl"), Description: cCtx.String("description")}
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.CreateTokenResponse, error) {
		return yunchiv1.NewTokenServiceClient(cc).CreateToken(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) {
		fmt.Fprintf(w, "%s\n", resp.GetSecret())
		owner := resp.GetToken().GetUser()
		if h := resp.GetToken().GetHostId(); h != "" {
			owner = "host " + h
		}
		fmt.Fprintf(s.stderr, "token %s for %s, expires %s: shown once, store it now\n",
			resp.GetToken().GetId(), owner, dash(s.out.timestamp(resp.GetToken().GetExpiresAt())))
	})
}

// tokenCurrent prints the token later commands would send, as it is
// (no call is made: it may be out of date, which the next command says).
// It is a secret: printed on stdout only, for a script to capture.
func tokenCurrent(cCtx *cli.Context) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	out, err := newPrinter(cCtx.App.Writer, cCtx.String("output"))
	if err != nil {
		return err
	}
	_, token, err := loginCredentials(cCtx)
	if err != nil {
		return err
	}
	if token == "" {
		return status.Error(codes.Unauthenticated, "no token: give --token or YUNCHI_TOKEN, or log in with yunchi login --addr HOST:PORT --token TOKEN")
	}
	return out.print(&yunchiv1.CreateTokenResponse{Secret: token}, func(w io.Writer) { fmt.Fprintln(w, token) })
}

func tokenList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListTokensResponse, error) {
		return yunchiv1.NewTokenServiceClient(cc).ListTokens(ctx, &yunchiv1.ListTokensRequest{User: cCtx.String("user")})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) {
		fmt.Fprintln(w, "ID\tUSER\tCREATED\tEXPIRES\tREVOKED\tDESCRIPTION")
		for _, t := range resp.GetTokens() {
			owner := t.GetUser()
			if t.GetHostId() != "" {
				owner = "host " + t.GetHostId()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.GetId(), owner, s.out.timestamp(t.GetCreatedAt()),
				dash(s.out.timestamp(t.GetExpiresAt())), dash(s.out.timestamp(t.GetRevokedAt())), dash(t.GetDescription()))
		}
	})
}

func tokenRevoke(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "ID")
	if err != nil {
		return err
	}
	t, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Token, error) {
		return yunchiv1.NewTokenServiceClient(cc).RevokeToken(ctx, &yunchiv1.RevokeTokenRequest{Id: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(t, func(w io.Writer) { fmt.Fprintf(w, "token %s of %s revoked\n", t.GetId(), dash(t.GetUser())) })
}

func whoami(s *session) (*yunchiv1.WhoAmIResponse, error) {
	return do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.WhoAmIResponse, error) {
		return yunchiv1.NewTokenServiceClient(cc).WhoAmI(ctx, &yunchiv1.WhoAmIRequest{})
	})
}

func whoamiCommand() *cli.Command {
	return &cli.Command{
		Name:  "whoami",
		Usage: "show who the controllers take you for",
		Action: withSession(func(cCtx *cli.Context, s *session) error {
			if _, err := needArgs(cCtx); err != nil {
				return err
			}
			r, err := whoami(s)
			if err != nil {
				return err
			}
			return s.out.print(r, func(w io.Writer) {
				kv(w, "Name", r.GetName())
				kv(w, "Role", r.GetRoleName())
				kv(w, "Department", r.GetDepartment())
				kv(w, "Projects", strings.Join(r.GetProjects(), ", "))
				kv(w, "Token", r.GetTokenId())
			})
		}),
	}
}

func loginCommand() *cli.Command {
	return &cli.Command{
		Name:      "login",
		Usage:     "check a token and store it with the controllers' addresses, so later commands need no flags",
		UsageText: "yunchi login --addr HOST:PORT[,HOST:PORT...] --token TOKEN\n\nThe config file is $YUNCHI_CONFIG or ~/.config/yunchi/config.json, mode 0600.",
		Action: withSession(func(cCtx *cli.Context, s *session) error {
			if _, err := needArgs(cCtx); err != nil {
				return err
			}
			if s.client.token == "" {
				return usagef("login: give --token (or YUNCHI_TOKEN)")
			}
			r, err := whoami(s)
			if err != nil {
				return err
			}
			path, err := cliconfig.SaveLogin(strings.Join(s.client.addrs, ","), s.client.token, r.GetName())
			if err != nil {
				return err
			}
			return s.out.print(r, func(w io.Writer) {
				fmt.Fprintf(w, "logged in to %s as %s (%s)\n", strings.Join(s.client.addrs, ","), r.GetName(), r.GetRoleName())
				fmt.Fprintf(s.stderr, "credentials stored in %s\n", path)
			})
		}),
	}
}

func logoutCommand() *cli.Command {
	return &cli.Command{
		Name:  "logout",
		Usage: "forget the stored token",
		Action: func(cCtx *cli.Context) error {
			if _, err := needArgs(cCtx); err != nil {
				return err
			}
			cfg, path, err := cliconfig.Load()
			if err != nil {
				return err
			}
			cfg.Token, cfg.User = "", ""
			if err := cliconfig.Save(path, cfg); err != nil {
				return err
			}
			fmt.Fprintf(cCtx.App.Writer, "logged out (%s)\n", path)
			return nil
		},
	}
}
