using Npgsql;

namespace Haven.Testing;

/// <summary>Management databases for server tests: SQLite (the default, nothing to set up) or a fresh PostgreSQL database.</summary>
public static class TestDatabases
{
    /// <summary>The kinds every server test runs on.</summary>
    public static IReadOnlyList<string> Kinds { get; } = ["sqlite", "postgres"];

    /// <summary>Marks "PostgreSQL is not configured here" (outside CI): the test passes without running.</summary>
    public const string Skip = "skip";

    /// <summary>
    /// Null for SQLite; for "postgres", a connection string to a new database on the server named by HAVEN_TEST_PG
    /// (scripts/test.sh starts one and sets it), or <see cref="Skip"/> when none is configured outside CI. In CI a
    /// missing PostgreSQL is an error: the suite must run on both engines.
    /// </summary>
    public static string? Create(string kind)
    {
        if (kind == "sqlite")
        {
            return null;
        }

        var admin = Environment.GetEnvironmentVariable("HAVEN_TEST_PG");
        if (admin is null)
        {
            if (Environment.GetEnvironmentVariable("CI") == "true")
            {
                throw new InvalidOperationException("PostgreSQL tests are required here but HAVEN_TEST_PG is not set: run scripts/test.sh");
            }

            return Skip;
        }

        string name = "haven_" + Guid.NewGuid().ToString("N")[..12];
        using (var c = new NpgsqlConnection(admin))
        {
            c.Open();
            using var cmd = new NpgsqlCommand($"CREATE DATABASE {name}", c);
            cmd.ExecuteNonQuery();
        }

        return new NpgsqlConnectionStringBuilder(admin) { Database = name }.ToString();
    }
}
