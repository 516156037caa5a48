using System.Data.Common;
using Dapper;
using Haven.Core;
using Microsoft.Data.Sqlite;
using Npgsql;

namespace Haven.Server.Database;

/// <summary>The two database engines the management database runs on; SQL that differs is written once per engine.</summary>
public enum SqlDialect
{
    Sqlite,
    PostgreSql,
}

/// <summary>
/// The server's management database: SQLite in the data folder by default, PostgreSQL when a connection string is
/// given (several server instances can then share it). One schema, applied by <see cref="Migrations"/>. Every
/// operation opens a pooled connection of its own, so the class is safe to share between requests.
/// </summary>
public sealed class ManagementDb
{
    private readonly string _connectionString;

    private ManagementDb(SqlDialect dialect, string connectionString, string description)
    {
        Dialect = dialect;
        _connectionString = connectionString;
        Description = description;
    }

    public SqlDialect Dialect { get; }

    /// <summary>Where the database is, for messages (never the password).</summary>
    public string Description { get; }

    /// <summary>
    /// <paramref name="database"/>: null for SQLite at <paramref name="sqlitePath"/>, or a PostgreSQL connection string
    /// (<c>Host=…;Username=…;Database=…</c>) or URL (<c>postgres://user:pass@host:port/db</c>).
    /// </summary>
    public static ManagementDb Open(string? database, string sqlitePath)
    {
        if (string.IsNullOrWhiteSpace(database))
        {
            // DefaultTimeout also bounds how long a command retries while another connection holds the write lock.
            var builder = new SqliteConnectionStringBuilder { DataSource = sqlitePath, Cache = SqliteCacheMode.Default, Pooling = true, DefaultTimeout = 30, ForeignKeys = true };
            return new ManagementDb(SqlDialect.Sqlite, builder.ToString(), $"SQLite {sqlitePath}");
        }

        string cs = database.StartsWith("postgres://", StringComparison.Ordinal) || database.StartsWith("postgresql://", StringComparison.Ordinal)
            ? FromUrl(database)
            : database;
        NpgsqlConnectionStringBuilder pg;
        try
        {
            pg = new NpgsqlConnectionStringBuilder(cs);
        }
        catch (ArgumentException e)
        {
            throw new HavenException(ErrorCode.Usage, $"the database connection string is malformed: {e.Message}", "give --database 'Host=HOST;Port=5432;Username=USER;Password=PASS;Database=DB' or a postgres:// URL");
        }

        return new ManagementDb(SqlDialect.PostgreSql, pg.ToString(), $"PostgreSQL {pg.Host}:{pg.Port}/{pg.Database}");
    }

    private static string FromUrl(string url)
    {
        var uri = new Uri(url);
        var userInfo = uri.UserInfo.Split(':', 2);
        var b = new NpgsqlConnectionStringBuilder
        {
            Host = uri.Host,
            Port = uri.Port > 0 ? uri.Port : 5432,
            Database = uri.AbsolutePath.Trim('/'),
            Username = Uri.UnescapeDataString(userInfo[0]),
        };
        if (userInfo.Length > 1)
        {
            b.Password = Uri.UnescapeDataString(userInfo[1]);
        }

        return b.ToString();
    }

    public async Task<DbConnection> ConnectAsync(CancellationToken ct)
    {
        DbConnection connection = Dialect == SqlDialect.Sqlite ? new SqliteConnection(_connectionString) : new NpgsqlConnection(_connectionString);
        try
        {
            await connection.OpenAsync(ct).ConfigureAwait(false);
            return connection;
        }
        catch (Exception e) when (e is SqliteException or NpgsqlException or System.Net.Sockets.SocketException)
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw new HavenException(ErrorCode.Unavailable, $"cannot open the management database ({Description}): {e.Message}", Dialect == SqlDialect.Sqlite ? "check that the data folder is writable" : "check that PostgreSQL runs and the connection string is right", e);
        }
    }

    public async Task<IReadOnlyList<T>> QueryAsync<T>(string sql, object? args, CancellationToken ct)
    {
        await using var c = await ConnectAsync(ct).ConfigureAwait(false);
        return (await c.QueryAsync<T>(new CommandDefinition(sql, args, cancellationToken: ct)).ConfigureAwait(false)).AsList();
    }

    public async Task<T?> QuerySingleOrDefaultAsync<T>(string sql, object? args, CancellationToken ct)
    {
        await using var c = await ConnectAsync(ct).ConfigureAwait(false);
        return await c.QuerySingleOrDefaultAsync<T>(new CommandDefinition(sql, args, cancellationToken: ct)).ConfigureAwait(false);
    }

    public async Task<int> ExecuteAsync(string sql, object? args, CancellationToken ct)
    {
        await using var c = await ConnectAsync(ct).ConfigureAwait(false);
        return await c.ExecuteAsync(new CommandDefinition(sql, args, cancellationToken: ct)).ConfigureAwait(false);
    }

    /// <summary>Runs <paramref name="body"/> in one transaction (SQLite: BEGIN IMMEDIATE, so it holds the write lock from the start).</summary>
    public async Task<T> InTransactionAsync<T>(Func<DbConnection, DbTransaction, Task<T>> body, CancellationToken ct)
    {
        await using var c = await ConnectAsync(ct).ConfigureAwait(false);
        await using var tx = Dialect == SqlDialect.Sqlite
            ? ((SqliteConnection)c).BeginTransaction(deferred: false)
            : await c.BeginTransactionAsync(ct).ConfigureAwait(false);
        var result = await body(c, tx).ConfigureAwait(false);
        await tx.CommitAsync(ct).ConfigureAwait(false);
        return result;
    }

    /// <summary>Brings the schema to the newest version this server knows; refuses a database from a newer server.</summary>
    public async Task<int> MigrateAsync(CancellationToken ct)
    {
        if (Dialect == SqlDialect.Sqlite)
        {
            // WAL lets readers run beside the one writer. The mode is kept in the database file, so once is enough.
            await using var c = await ConnectAsync(ct).ConfigureAwait(false);
            await c.ExecuteAsync("PRAGMA journal_mode=WAL").ConfigureAwait(false);
        }

        return await Migrations.ApplyAsync(this, ct).ConfigureAwait(false);
    }
}
