using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Repository;
using Haven.Repository.Chunking;

namespace Haven.Cli.Commands;

public static class InitCommand
{
    public static Command Build()
    {
        var compression = new Option<int>("--compression") { Description = "zstd level for new data, 1-19, or 0 for none", DefaultValueFactory = _ => 3 };
        var command = new Command("init", "Create a new repository")
        {
            compression,
        };
        command.Description += """


            Examples:
              haven init --repo /srv/backup
              HAVEN_REPOSITORY=s3:http://127.0.0.1:7480/backups haven init
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            int level = ctx.Parse.GetValue(compression);
            if (level is < 0 or > 19)
            {
                throw new Haven.Core.HavenException(Haven.Core.ErrorCode.Usage, "--compression must be between 0 and 19");
            }

            var store = ctx.OpenStore(forInit: true);
            var password = ctx.GetPassword("new repository password: ", confirm: true);
            await using var repo = await Haven.Repository.Repository.InitAsync(store, password, new RepositoryInitOptions { Compression = level, Chunker = ChunkerParameters.Default }, null, ct);
            ctx.Output.Line($"created repository {repo.Config.Id[..8]} at {repo.Location}");
            ctx.Output.Line("keep the password safe: without it the data cannot be read back");
            ctx.Output.JsonResult(new JsonObject { ["id"] = repo.Config.Id, ["location"] = repo.Location, ["version"] = repo.Config.Version });
            return 0;
        });
        return command;
    }
}
